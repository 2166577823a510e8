//! Values built to break env files: quoting, expansion, line structure, unicode.
//! Deterministic for a seed, so a failure can be replayed. Used by the dash/bash
//! round trip here and by the systemd boot test.

/// Fragments every value is assembled from.
const PIECES: &[&str] = &[
    "\"",
    "'",
    "\\",
    "\\\\",
    "\\\"",
    "\\$",
    "$",
    "$HOME",
    "${HOME}",
    "$(id)",
    "`id`",
    "$((1+1))",
    "$1",
    "$@",
    "\n",
    "\r\n",
    "\r",
    "\t",
    "#",
    " #x",
    "=",
    "==",
    ";",
    "&&",
    "|",
    ">",
    "<",
    "*",
    "?",
    "[a]",
    "~",
    "!",
    "{}",
    " ",
    "  ",
    "\\\n",
    "\u{7f}",
    "\u{1}",
    "\u{1b}[31m",
    "é",
    "日本",
    "🙂",
    "\u{200b}",
    "\u{feff}",
    "export",
    "unset",
    "%s",
    "%%",
    "a",
    "Z9",
    "-",
    "--",
    "'\"'\"'",
    "\"\"",
    "''",
    "\\n",
    "\\t",
    "x\\",
];

/// `count` values; the first ones are the classic corner cases, the rest random mixes.
pub fn values(count: usize, seed: u64) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out: Vec<String> = [
        "",
        " leading",
        "trailing ",
        " both ",
        "\n",
        "\nleading newline",
        "trailing newline\n",
        "trailing backslash\\",
        "\\",
        "\"",
        "$",
        "`",
        "a=b",
        "# not a comment",
        "multi\nline\n\nvalue",
        "tab\there",
        "unicode ✓ ünïcödé 日本語 🙂",
        "$(touch /tmp/bootstage-pwned)",
        "`touch /tmp/bootstage-pwned`",
        "'single quoted'",
        "\"double quoted\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    while out.len() < count {
        let n = rng.usize(1..8);
        out.push((0..n).map(|_| PIECES[rng.usize(..PIECES.len())]).collect());
    }
    out.truncate(count);
    out
}
