//! `params.env`: parameters and facts as one `KEY="value"` line each, sorted.
//!
//! One file serves two readers that disagree on quoting in general: POSIX sh (`. params.env`
//! in dash or bash) and systemd's `EnvironmentFile=`. Inside double quotes both treat a
//! backslash before one of `\ " $ `` ` as an escape and keep every other byte literally,
//! newlines included, so escaping exactly those four characters makes both read each value
//! back byte for byte. A NUL byte neither can carry: that is an error, never a mangled value.
//!
//! Names: nested object keys are joined with `_`, uppercased, every other character becomes
//! `_`, and a leading digit gets a `_` prefix (`db.port` and `{"db":{"port":…}}` both
//! become `DB_PORT`, which is why two keys that flatten to one name are an error). Values:
//! strings verbatim, numbers and booleans as their JSON text, null as empty, arrays as
//! compact JSON. The top-level key `bootstage` holds bootstage's own settings and is not
//! exported; the `BOOTSTAGE_` prefix is reserved for facts.

use std::collections::BTreeMap;

use crate::base::exit::{ExitCode, ExitStatus};
use serde_json::{Map, Value};

/// The top-level parameter that configures bootstage itself.
pub const SETTINGS_KEY: &str = "bootstage";
/// Prefix of the facts bootstage exports (`BOOTSTAGE_INSTANCE_ID` …).
pub const FACT_PREFIX: &str = "BOOTSTAGE_";

/// Names a parameter may not take, each list with why: every program that loads the file
/// (a shell sourcing it, systemd's `EnvironmentFile=`, `launch`) must read the same
/// variables, and none may change how the shell, the loader or systemd behave. Names are
/// always upper case (see [`env_name`]). Nest such a parameter instead (`app.path`).
const RESERVED: &[(&str, &[&str], &[&str])] = &[
    (
        "how the shell parses, finds commands or starts",
        &[
            "PATH",
            "IFS",
            "ENV",
            "BASH_ENV",
            "SHELLOPTS",
            "BASHOPTS",
            "CDPATH",
            "GLOBIGNORE",
            "PS1",
            "PS2",
            "PS4",
            "PROMPT_COMMAND",
            "POSIXLY_CORRECT",
            "OPTIND",
            "OPTARG",
        ],
        &["BASH_"],
    ),
    (
        "a variable bash keeps read-only or sets itself (sourcing aborts under bash --posix, \
         which is /bin/sh on Amazon Linux and RHEL, or bash changes the value while dash and \
         systemd keep it)",
        &[
            "UID",
            "EUID",
            "PPID",
            "_",
            "RANDOM",
            "SRANDOM",
            "SECONDS",
            "LINENO",
            "GROUPS",
            "BASHPID",
            "FUNCNAME",
            "EPOCHSECONDS",
            "EPOCHREALTIME",
            "HISTCMD",
            "PIPESTATUS",
            "DIRSTACK",
            "COMP_WORDBREAKS",
        ],
        &[],
    ),
    (
        "the C library and dynamic loader of every program",
        &[
            "GCONV_PATH",
            "GLIBC_TUNABLES",
            "LOCPATH",
            "NLSPATH",
            "HOSTALIASES",
            "RES_OPTIONS",
            "LOCALDOMAIN",
            "TMPDIR",
            "TZDIR",
        ],
        &["LD_", "MALLOC_"],
    ),
    (
        "what systemd sets for a service",
        &[
            "NOTIFY_SOCKET",
            "CREDENTIALS_DIRECTORY",
            "JOURNAL_STREAM",
            "INVOCATION_ID",
            "MAINPID",
            "MANAGERPID",
            "SYSTEMD_EXEC_PID",
            "RUNTIME_DIRECTORY",
            "STATE_DIRECTORY",
            "CACHE_DIRECTORY",
            "LOGS_DIRECTORY",
            "CONFIGURATION_DIRECTORY",
        ],
        &["LISTEN_", "WATCHDOG_", "TRIGGER_"],
    ),
    ("bootstage's own facts", &["BOOTSTAGE"], &[FACT_PREFIX]),
];

/// Names that change what an interpreter, the loader, a tool or an AWS client does. An
/// imported parameter never takes one (whoever can write an import path is not trusted to
/// steer root's hooks); user-data may, since whoever writes user-data already decides what
/// root runs (`bootstage.notify.command`). Each list with why; names are upper case.
const STEERING: &[(&str, &[&str], &[&str])] = &[
    (
        "where a program finds its user's configuration (which it may run)",
        &[
            "HOME",
            "SHELL",
            "CURL_HOME",
            "WGETRC",
            "GNUPGHOME",
            "INPUTRC",
            "TERMINFO",
            "PHPRC",
            "PHP_INI_SCAN_DIR",
            "KUBECONFIG",
            "BOTO_CONFIG",
            "DOCKER_CONFIG",
            "DOCKER_HOST",
            "EDITOR",
            "VISUAL",
            "PAGER",
            "LESSOPEN",
            "LESSCLOSE",
            "TAR_OPTIONS",
            "MAKEFLAGS",
            "SSH_ASKPASS",
            "SSH_AUTH_SOCK",
            "SUDO_ASKPASS",
            "GIT_ASKPASS",
            "SSLKEYLOGFILE",
        ],
        &[
            "XDG_",
            "SYSTEMD_",
            "NPM_CONFIG_",
            "PIP_",
            "GEM_",
            "BUNDLE_",
            "OPENSSL_",
        ],
    ),
    (
        "code an interpreter loads or runs at start",
        &[
            "JAVA_OPTS",
            "JAVA_HOME",
            "LUA_INIT",
            "NODE_TLS_REJECT_UNAUTHORIZED",
            "NODE_REPL_EXTERNAL_MODULE",
            "PERL5OPT",
            "PERL5LIB",
            "PERLLIB",
            "PERL5DB",
            "RUBYOPT",
            "RUBYLIB",
            "NODE_OPTIONS",
            "NODE_PATH",
            "JAVA_TOOL_OPTIONS",
            "_JAVA_OPTIONS",
            "JDK_JAVA_OPTIONS",
            "CLASSPATH",
            "BASH_ENV",
            "ENV",
            "ZDOTDIR",
            "TCLLIBPATH",
            "LUA_PATH",
            "LUA_CPATH",
            "GCONV_PATH",
        ],
        &["PYTHON", "PERL", "RUBY", "LD_", "GIT_"],
    ),
    (
        "where a program's network traffic goes or whom it trusts",
        &[
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "NO_PROXY",
            "FTP_PROXY",
            "SSL_CERT_FILE",
            "SSL_CERT_DIR",
            "CURL_CA_BUNDLE",
            "REQUESTS_CA_BUNDLE",
            "NODE_EXTRA_CA_CERTS",
            "OPENSSL_CONF",
        ],
        &["AWS_"],
    ),
];

/// The longest variable name: far above any real one, short enough that no nesting of
/// long keys can make every variable repeat kilobytes of its ancestors' names.
pub const MAX_NAME: usize = 255;
/// The whole file: well under ARG_MAX (2 MiB on Linux) with the rest of an environment,
/// so every exec of a program that gets it can succeed.
pub const MAX_FILE: usize = 1024 * 1024;

/// Linux refuses a single `NAME=value` environment string longer than this (MAX_ARG_STRLEN
/// less the NUL), so a longer one would fail the app's exec, not this stage. Refuse it here.
pub const MAX_ENTRY: usize = 128 * 1024 - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExportError {
    #[error("parameter {0} has an empty name")]
    EmptyName(String),
    #[error("parameters {first} and {second} would both be exported as {name}")]
    Collision {
        first: String,
        second: String,
        name: String,
    },
    #[error(
        "parameter {path} would be exported as {name}, a name reserved for {why}; nest it under another key"
    )]
    Reserved {
        path: String,
        name: String,
        why: &'static str,
    },
    #[error("parameter {0} contains a NUL character, which neither a shell nor systemd can carry")]
    Nul(String),
    #[error(
        "parameter {0} contains a Unicode noncharacter (U+FDD0-U+FDEF, U+xFFFE, U+xFFFF), which makes systemd reject the whole EnvironmentFile"
    )]
    Noncharacter(String),
    #[error(
        "parameter {path} would be exported as a name of {len} bytes; names are limited to {MAX_NAME}"
    )]
    NameTooLong { path: String, len: usize },
    #[error(
        "params.env would be over {MAX_FILE} bytes (at parameter {0}); every program started with it would fail to exec"
    )]
    FileTooLarge(String),
    #[error(
        "parameter {path} is {len} bytes as NAME=value; Linux refuses environment entries over {MAX_ENTRY} bytes"
    )]
    TooLong { path: String, len: usize },
    #[error(
        "the top-level `{SETTINGS_KEY}` parameter holds bootstage's settings and must be an object"
    )]
    Settings,
}

/// The variables of `params.env`, by name, each with the parameter path it came from.
#[derive(Debug, Default)]
pub struct Env {
    vars: BTreeMap<String, (String, String)>,
    /// The rendered file's size so far.
    size: usize,
}

impl Env {
    /// Flattens the parameters object into variables.
    pub fn from_params(params: &Map<String, Value>) -> Result<Env, ExportError> {
        let mut env = Env::default();
        let mut path = Vec::new();
        for (key, value) in params {
            if key == SETTINGS_KEY {
                if !value.is_object() {
                    return Err(ExportError::Settings);
                }
                continue;
            }
            path.push(key.as_str());
            env.walk(&mut path, value)?;
            path.pop();
        }
        Ok(env)
    }

    fn walk<'a>(&mut self, path: &mut Vec<&'a str>, value: &'a Value) -> Result<(), ExportError> {
        if let Value::Object(map) = value {
            for (key, value) in map {
                path.push(key);
                self.walk(path, value)?;
                path.pop();
            }
            return Ok(());
        }
        // Measured before anything is built from the path, so a deep nesting of long keys
        // costs no more memory than the limit.
        let len = path.iter().map(|k| k.len()).sum::<usize>() + path.len();
        if len > MAX_NAME + 1 {
            let mut shown: String = path.join(".").chars().take(60).collect();
            shown.push('…');
            return Err(ExportError::NameTooLong {
                path: format!("{shown:?}"),
                len: len - 1,
            });
        }
        let shown = format!("{:?}", path.join("."));
        let name = env_name(path);
        if name.is_empty() {
            return Err(ExportError::EmptyName(shown));
        }
        if let Some(why) = reserved(&name) {
            return Err(ExportError::Reserved {
                path: shown,
                name,
                why,
            });
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            Value::Bool(_) | Value::Number(_) | Value::Array(_) => value.to_string(),
            Value::Object(_) => unreachable!("objects are flattened above"),
        };
        self.insert(name, shown, text)
    }

    /// Adds a fact (`BOOTSTAGE_…`); facts come from IMDS or flags, never from parameters.
    pub fn insert_fact(&mut self, name: &str, value: &str) -> Result<(), ExportError> {
        debug_assert!(name.starts_with(FACT_PREFIX));
        self.insert(name.to_string(), name.to_string(), value.to_string())
    }

    fn insert(&mut self, name: String, path: String, value: String) -> Result<(), ExportError> {
        if value.contains('\0') {
            return Err(ExportError::Nul(path));
        }
        if value.chars().any(is_noncharacter) {
            return Err(ExportError::Noncharacter(path));
        }
        self.size += line_len(&name, &value);
        if self.size > MAX_FILE {
            return Err(ExportError::FileTooLarge(path));
        }
        let len = name.len() + 1 + value.len();
        if len > MAX_ENTRY {
            return Err(ExportError::TooLong { path, len });
        }
        if let Some((first, _)) = self.vars.get(&name) {
            return Err(ExportError::Collision {
                first: first.clone(),
                second: path,
                name,
            });
        }
        self.vars.insert(name, (path, value));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.vars.len()
    }

    /// The rendered file's size so far.
    pub fn size(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.vars.is_empty()
    }

    /// The variables as `(name, value)`, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.vars.iter().map(|(k, (_, v))| (k.as_str(), v.as_str()))
    }

    /// The file's text.
    pub fn render(&self) -> String {
        self.render_without(&std::collections::BTreeSet::new())
    }

    /// The file's text without the variables in `left_out` (`hooks.env`: no imported ones).
    pub fn render_without(&self, left_out: &std::collections::BTreeSet<String>) -> String {
        let mut out = String::new();
        for (name, value) in self.iter().filter(|(name, _)| !left_out.contains(*name)) {
            out.push_str(name);
            out.push_str("=\"");
            for c in value.chars() {
                if matches!(c, '\\' | '"' | '$' | '`') {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push_str("\"\n");
        }
        out
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path} line {line}: {why}")]
pub struct ParseError {
    pub path: String,
    pub line: usize,
    pub why: &'static str,
}

/// Reads an env file back as sh and systemd do for the form [`Env::render`] writes:
/// `NAME="value"` lines where, inside the quotes, a backslash escapes one of `\ " $ `` `,
/// a backslash before a newline joins the lines, and every other character is literal.
/// Blank lines and `#` comments are skipped; anything else is an error naming the line.
pub fn parse(text: &str, path: &str) -> Result<Vec<(String, String)>, ParseError> {
    let err = |line, why| ParseError {
        path: path.to_string(),
        line,
        why,
    };
    let mut vars = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    loop {
        while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
        match chars.peek() {
            None => break,
            Some('\n') => {
                chars.next();
                line += 1;
                continue;
            }
            Some('#') => {
                while chars.next().is_some_and(|c| c != '\n') {}
                line += 1;
                continue;
            }
            Some(_) => {}
        }
        let start = line;
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != '\n') {
            name.push(c);
        }
        let valid = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if chars.next() != Some('=') || !valid {
            return Err(err(start, "expected NAME=\"value\""));
        }
        if chars.next() != Some('"') {
            return Err(err(start, "the value must be in double quotes"));
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return Err(err(start, "unterminated double quote")),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c @ ('\\' | '"' | '$' | '`')) => value.push(c),
                    Some('\n') => line += 1,
                    Some(c) => {
                        value.push('\\');
                        value.push(c);
                        line += usize::from(c == '\n');
                    }
                    None => return Err(err(start, "unterminated double quote")),
                },
                Some(c) => {
                    line += usize::from(c == '\n');
                    value.push(c);
                }
            }
        }
        while chars.next_if(|c| matches!(c, ' ' | '\t')).is_some() {}
        match chars.next() {
            None => {}
            Some('\n') => line += 1,
            Some(_) => return Err(err(line, "unexpected text after the closing quote")),
        }
        vars.push((name, value));
    }
    Ok(vars)
}

/// The names `params` would be exported as (no value checked), for precedence: what
/// user-data sets, an import does not.
pub fn names(params: &Map<String, Value>) -> std::collections::BTreeSet<String> {
    fn walk<'a>(
        path: &mut Vec<&'a str>,
        value: &'a Value,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    path.push(key);
                    walk(path, value, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(env_name(path));
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    for (key, value) in params.iter().filter(|(k, _)| *k != SETTINGS_KEY) {
        let mut path = vec![key.as_str()];
        walk(&mut path, value, &mut out);
    }
    out
}

/// The bytes `NAME="value"\n` takes in the file, one backslash per escaped character.
pub fn line_len(name: &str, value: &str) -> usize {
    let escaped = value
        .bytes()
        .filter(|b| matches!(b, b'\\' | b'"' | b'$' | b'`'))
        .count();
    name.len() + value.len() + escaped + 4
}

/// Why `value` cannot be exported as `name` on its own, if it cannot: what `Env` would
/// refuse for the whole file, asked of one imported parameter so that it alone is left out.
pub fn unexportable(name: &str, value: &str) -> Option<String> {
    if name.len() > MAX_NAME {
        return Some(format!(
            "its variable name would be {} bytes, over {MAX_NAME}",
            name.len()
        ));
    }
    if value.contains('\0') {
        return Some("its value holds a NUL character".into());
    }
    if value.chars().any(is_noncharacter) {
        return Some("its value holds a Unicode noncharacter, which systemd refuses".into());
    }
    let len = name.len() + 1 + value.len();
    if len > MAX_ENTRY {
        return Some(format!(
            "it would be {len} bytes as NAME=value, over Linux's {MAX_ENTRY}"
        ));
    }
    None
}

/// The variable name for a parameter path.
pub fn env_name(path: &[&str]) -> String {
    let mut name: String = path
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// Why no parameter may be exported as `name`, if none may.
pub fn reserved(name: &str) -> Option<&'static str> {
    listed(RESERVED, name)
}

/// Why an imported parameter may not be exported as `name`, if it may not: a reserved
/// name, or one that steers an interpreter, the loader or a tool ([`STEERING`]).
pub fn steering(name: &str) -> Option<&'static str> {
    listed(RESERVED, name).or_else(|| listed(STEERING, name))
}

fn listed(lists: &[(&'static str, &[&str], &[&str])], name: &str) -> Option<&'static str> {
    lists
        .iter()
        .find(|(_, names, prefixes)| {
            names.contains(&name) || prefixes.iter().any(|p| name.starts_with(p))
        })
        .map(|(why, ..)| *why)
}

/// Unicode noncharacters, which systemd's UTF-8 check refuses in an environment value
/// (`unichar_is_valid`): U+FDD0–U+FDEF and the last two code points of every plane.
pub fn is_noncharacter(c: char) -> bool {
    let c = c as u32;
    (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE
}

impl ExitStatus for ExportError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::BadUserData
    }
}

impl ExitStatus for ParseError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::BadUserData
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(v: Value) -> Result<Vec<(String, String)>, ExportError> {
        let Value::Object(map) = v else { panic!() };
        Env::from_params(&map).map(|e| e.iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    #[test]
    fn names_and_values() {
        let got = env(json!({
            "db": {"host": "h", "port": 5432, "tls": true, "opt": null},
            "list": [1, "a", {"b": 2}],
            "9lives": "x",
            "dash-and.dot": "y",
            "bootstage": {"sync": []},
            "big": 12345678901234567890123_u128,
            "empty": {},
        }))
        .unwrap();
        let want = [
            ("BIG", "12345678901234567890123"),
            ("DASH_AND_DOT", "y"),
            ("DB_HOST", "h"),
            ("DB_OPT", ""),
            ("DB_PORT", "5432"),
            ("DB_TLS", "true"),
            ("LIST", r#"[1,"a",{"b":2}]"#),
            ("_9LIVES", "x"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }

    #[test]
    fn collisions_name_both_keys() {
        let err = env(json!({"db": {"port": 1}, "db.port": 2})).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"parameters "db.port" and "db.port" would both be exported as DB_PORT"#
        );
        let err = env(json!({"a-b": 1, "A_B": 2})).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"parameters "a-b" and "A_B" would both be exported as A_B"#
        );
    }

    #[test]
    fn hostile_names_are_refused() {
        for (key, name) in [
            ("bootstage_instance_id", "BOOTSTAGE_INSTANCE_ID"),
            ("path", "PATH"),
            ("ld.preload", "LD_PRELOAD"),
            ("Bootstage", "BOOTSTAGE"),
            ("ifs", "IFS"),
        ] {
            match env(json!({ key: "x" })).unwrap_err() {
                ExportError::Reserved { name: n, .. } => assert_eq!(n, name),
                e => panic!("{key}: {e}"),
            }
        }
        assert_eq!(
            env(json!({"": 1})).unwrap_err(),
            ExportError::EmptyName("\"\"".into())
        );
        assert_eq!(env(json!({"a\nb=c; rm": "v"})).unwrap()[0].0, "A_B_C__RM");
        assert_eq!(
            env(json!({"bootstage": 1})).unwrap_err(),
            ExportError::Settings
        );
    }

    #[test]
    fn nul_and_oversized_values_are_refused() {
        assert_eq!(
            env(json!({"k": "a\u{0}b"})).unwrap_err(),
            ExportError::Nul("\"k\"".into())
        );
        let long = "x".repeat(MAX_ENTRY);
        assert!(matches!(
            env(json!({ "k": long })).unwrap_err(),
            ExportError::TooLong { .. }
        ));
    }

    #[test]
    fn parse_reads_back_what_render_writes_and_what_sh_allows() {
        let text = "# comment\n\nA=\"x\\\"y\\\\z\\$w\\`v\"\nB=\"multi\nline\\\njoined \\n kept\"  \n  C=\"\"\n";
        let got = parse(text, "f").unwrap();
        let want = [
            ("A", "x\"y\\z$w`v"),
            ("B", "multi\nlinejoined \\n kept"),
            ("C", ""),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
        let bad = |t: &str| parse(t, "f").unwrap_err().to_string();
        assert_eq!(
            bad("A=\"x\"\nB=unquoted\n"),
            "f line 2: the value must be in double quotes"
        );
        assert_eq!(bad("1A=\"x\"\n"), "f line 1: expected NAME=\"value\"");
        assert_eq!(bad("A=\"x\n\ny"), "f line 1: unterminated double quote");
        assert_eq!(
            bad("A=\"x\" y\n"),
            "f line 1: unexpected text after the closing quote"
        );
    }

    #[test]
    fn render_escapes_only_what_double_quotes_interpret() {
        let mut e = Env::default();
        e.insert("A".into(), "a".into(), "q\"b\\d$e`f'g\nh".into())
            .unwrap();
        e.insert("B".into(), "b".into(), String::new()).unwrap();
        assert_eq!(e.render(), "A=\"q\\\"b\\\\d\\$e\\`f'g\nh\"\nB=\"\"\n");
    }
}
