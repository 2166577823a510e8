//! Decoding user-data into the parameters object.
//!
//! Accepted forms, tried in this order after trimming surrounding whitespace:
//! 1. a JSON object as-is (it starts with `{`);
//! 2. gzip (starts with 1f 8b), then JSON;
//! 3. base64 (standard or URL-safe alphabet, padded or not, wrapped over lines), then
//!    gzip if the decoded bytes start with 1f 8b, then JSON.
//!
//! 4. MIME (what cloud-init, EKS and AWS Batch use), as-is or gzipped whole: the first line
//!    is a header field and the headers name a MIME-Version or a Content-Type. bootstage's
//!    parameters come from the one part that is bootstage's ([`mime`] says which); every
//!    other part is cloud-init's, skipped unread beyond its headers and never logged.
//!
//! The result must be a JSON object. Every error names the step that failed and a position
//! (a MIME part by its index), and never echoes any of the content, a header's value
//! included: user-data carries secrets.

use std::fmt;
use std::io::Read;

use crate::base::exit::{ExitCode, ExitStatus};
use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

/// EC2's own limit on raw user-data.
pub const MAX_RAW: usize = 16 * 1024;
/// Limit on the decompressed JSON, so a small gzip bomb cannot exhaust memory.
pub const MAX_DECOMPRESSED: usize = 256 * 1024;

/// Most MIME parts a user-data may have, nested ones counted: each may be decompressed,
/// so their number bounds the work.
pub const MAX_PARTS: usize = 100;
/// Deepest nesting of `multipart/*` inside the message.
pub const MAX_DEPTH: usize = 4;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

/// The part types that cloud-init decompresses (its `DECOMP_TYPES`), which bootstage
/// decompresses too, then reads as JSON when the content starts with `{`.
const GZIP_TYPES: &[&str] = &[
    "application/gzip",
    "application/gzip-compressed",
    "application/gzipped",
    "application/x-compress",
    "application/x-compressed",
    "application/x-gunzip",
    "application/x-gzip",
    "application/x-gzip-compressed",
];

/// The decoding steps that succeeded before the failing one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layers {
    Plain,
    Gzip,
    Base64,
    Base64Gzip,
}

impl fmt::Display for Layers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layers::Plain => "",
            Layers::Gzip => "gzip ok, ",
            Layers::Base64 => "base64 ok, ",
            Layers::Base64Gzip => "base64 ok, gzip ok, ",
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("it is {0} bytes, over EC2's limit of {MAX_RAW}")]
    TooLarge(usize),
    #[error("it is empty")]
    Empty,
    #[error(
        "it is a script or cloud-config, not bootstage parameters (a JSON object, plain or base64)"
    )]
    Script,
    #[error("not base64: unexpected character at line {line} column {column}")]
    Base64Char { line: usize, column: usize },
    #[error("not base64: {0}")]
    Base64(&'static str),
    #[error("{0}gzip invalid: {1}")]
    Gzip(Layers, String),
    #[error("{0}decompressed data is over {MAX_DECOMPRESSED} bytes")]
    Decompressed(Layers),
    #[error("{layers}JSON invalid at line {line} column {column}{reason}")]
    Json {
        layers: Layers,
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("{0}JSON is {1}, not an object")]
    NotObject(Layers, &'static str),
    #[error("MIME malformed: {0}")]
    Mime(String),
    #[error("MIME part {index} malformed: {reason}")]
    PartMalformed { index: String, reason: String },
    #[error(
        "its Content-Transfer-Encoding is not one bootstage reads (none, 7bit, 8bit, binary, base64)"
    )]
    TransferEncoding,
    #[error("MIME part {index}: {source}")]
    Part {
        index: String,
        source: Box<DecodeError>,
    },
    #[error("MIME parts {} all hold bootstage parameters; keep one", .0.join(", "))]
    Candidates(Vec<String>),
    #[error(
        "no MIME part holds bootstage parameters (a text/x-bootstage part, or application/json with a \"bootstage\" key); give it one, or pass --allow-empty to boot with none"
    )]
    NoParameters,
}

/// Decodes raw user-data into the parameters object.
pub fn decode(raw: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    if raw.len() > MAX_RAW {
        return Err(DecodeError::TooLarge(raw.len()));
    }
    if raw.starts_with(GZIP_MAGIC) {
        let bytes = gunzip(raw, Layers::Gzip)?;
        if is_mime(trim(&bytes)) {
            return mime(trim(&bytes));
        }
        return json_object(&bytes, Layers::Gzip);
    }
    decode_text(raw, true)
}

fn trim(raw: &[u8]) -> &[u8] {
    let text = raw.trim_ascii();
    text.strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(text)
        .trim_ascii()
}

/// Everything but the size check and gzip of the whole; a `text/x-bootstage` part is
/// decoded here too, with `allow_mime` false (no MIME inside MIME's own part).
fn decode_text(raw: &[u8], allow_mime: bool) -> Result<Map<String, Value>, DecodeError> {
    if raw.starts_with(GZIP_MAGIC) {
        return json_object(&gunzip(raw, Layers::Gzip)?, Layers::Gzip);
    }
    let text = trim(raw);
    match text.first() {
        None => Err(DecodeError::Empty),
        Some(b'{') => json_object(text, Layers::Plain),
        Some(b'#') => Err(DecodeError::Script),
        Some(_) if allow_mime && is_mime(text) => mime(text),
        Some(_) => {
            let bytes = base64(text)?;
            if bytes.starts_with(GZIP_MAGIC) {
                json_object(&gunzip(&bytes, Layers::Base64Gzip)?, Layers::Base64Gzip)
            } else {
                json_object(&bytes, Layers::Base64)
            }
        }
    }
}

/// Whether user-data is a MIME message: its first line is a header field, a name of letters,
/// digits and `-`, then `:`. JSON starts with `{`, a script with `#`, and base64 has no `:`,
/// so no form accepted before MIME was reads as one.
fn is_mime(text: &[u8]) -> bool {
    let line = text.split(|&b| b == b'\n').next().unwrap_or_default();
    match line.iter().position(|&b| b == b':') {
        None | Some(0) => false,
        Some(at) => line[..at]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-'),
    }
}

/// A header field: its name lowercased, its value unfolded.
type Field = (String, String);

/// An entity's header fields and its body (after the first empty line; LF or CRLF).
/// `Err(n)`: line `n` (from 1) is neither a field nor a continuation of one.
fn entity(bytes: &[u8]) -> Result<(Vec<Field>, &[u8]), usize> {
    let mut fields: Vec<Field> = Vec::new();
    let mut rest = bytes;
    let mut number = 0;
    while !rest.is_empty() {
        let (line, next) = match rest.iter().position(|&b| b == b'\n') {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &rest[rest.len()..]),
        };
        number += 1;
        rest = next;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            let (_, value) = fields.last_mut().ok_or(number)?;
            value.push(' ');
            value.push_str(&String::from_utf8_lossy(line.trim_ascii()));
            continue;
        }
        let colon = line.iter().position(|&b| b == b':').ok_or(number)?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(u8::is_ascii_graphic) {
            return Err(number);
        }
        fields.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(line[colon + 1..].trim_ascii()).into_owned(),
        ));
    }
    Ok((fields, rest))
}

fn header<'a>(fields: &'a [Field], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A Content-Type's media type, lowercased, without its parameters.
fn media_type(value: &str) -> String {
    let kind = value.split(';').next().unwrap_or_default();
    kind.trim().to_ascii_lowercase()
}

/// A Content-Type's `boundary` parameter, unquoted. Boundary characters (RFC 2046) include
/// neither `;` nor `"`, so splitting on `;` is exact for it.
fn boundary(value: &str) -> Option<&str> {
    value.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// A multipart body's parts, between `--BOUNDARY` lines (trailing blanks allowed), up to
/// the closing `--BOUNDARY--`; the preamble and epilogue are dropped, and so is the line
/// break before each delimiter, which belongs to it.
fn split<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<&'a [u8]>, &'static str> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut at = 0;
    while at < body.len() {
        let end = body[at..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| at + i);
        let line = &body[at..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(after) = line.strip_prefix(delimiter.as_bytes()) {
            let close = after.starts_with(b"--");
            let tail = if close { &after[2..] } else { after };
            if tail.iter().all(|&b| b == b' ' || b == b'\t') {
                if let Some(start) = start {
                    let mut stop = at;
                    if stop > start && body[stop - 1] == b'\n' {
                        stop -= 1;
                        if stop > start && body[stop - 1] == b'\r' {
                            stop -= 1;
                        }
                    }
                    parts.push(&body[start..stop]);
                }
                if close {
                    return Ok(parts);
                }
                start = Some((end + 1).min(body.len()));
            }
        }
        at = end + 1;
    }
    Err(match start {
        None => "the boundary its Content-Type names never occurs",
        Some(_) => "the closing boundary is missing (truncated?)",
    })
}

/// MIME user-data: bootstage's parameters are the one part that is bootstage's:
/// - `text/x-bootstage`: decoded as whole user-data is (JSON, gzip, base64, base64 of gzip);
/// - `application/json` whose object has a `bootstage` key;
/// - a gzip part (cloud-init's [`GZIP_TYPES`]) whose content is such a JSON object.
///
/// A part of those types that cannot be decoded is an error naming it (it may be ours);
/// a part of another type is cloud-init's and is skipped; so are JSON and gzip parts
/// without a `bootstage` key. `Content-Transfer-Encoding: base64` is undone first. Two
/// parts of bootstage's are an error naming both, none is [`DecodeError::NoParameters`].
fn mime(text: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    let (fields, body) = entity(text).map_err(|line| {
        DecodeError::Mime(format!(
            "line {line} of the message's headers is not a header field"
        ))
    })?;
    if header(&fields, "mime-version").is_none() && header(&fields, "content-type").is_none() {
        return Err(DecodeError::Mime(
            "the message has no MIME-Version or Content-Type header".into(),
        ));
    }
    let mut walk = Walk::default();
    walk.part(&fields, body, "", 0)?;
    match walk.found.len() {
        0 => Err(DecodeError::NoParameters),
        1 => Ok(walk.found.remove(0).1),
        _ => Err(DecodeError::Candidates(
            walk.found.into_iter().map(|(index, _)| index).collect(),
        )),
    }
}

#[derive(Default)]
struct Walk {
    parts: usize,
    found: Vec<(String, Map<String, Value>)>,
}

impl Walk {
    /// One entity, `index` "" for the whole message ("1" when it is not multipart), "2" for
    /// its second part, "2.1" for the first part inside that.
    fn part(
        &mut self,
        fields: &[Field],
        body: &[u8],
        index: &str,
        depth: usize,
    ) -> Result<(), DecodeError> {
        let malformed = |reason: String| match index {
            "" => DecodeError::Mime(reason),
            _ => DecodeError::PartMalformed {
                index: index.into(),
                reason,
            },
        };
        let content_type = header(fields, "content-type").unwrap_or("text/plain");
        let kind = media_type(content_type);
        if kind.starts_with("multipart/") {
            if depth >= MAX_DEPTH {
                return Err(malformed(format!(
                    "multipart nested more than {MAX_DEPTH} deep"
                )));
            }
            let boundary = boundary(content_type)
                .filter(|b| !b.is_empty() && b.len() <= 70)
                .ok_or_else(|| {
                    malformed("its Content-Type has no boundary of 1 to 70 characters".into())
                })?;
            for (i, part) in split(body, boundary)
                .map_err(|reason| malformed(reason.into()))?
                .into_iter()
                .enumerate()
            {
                let index = match index {
                    "" => format!("{}", i + 1),
                    _ => format!("{index}.{}", i + 1),
                };
                self.parts += 1;
                if self.parts > MAX_PARTS {
                    return Err(DecodeError::Mime(format!(
                        "it has more than {MAX_PARTS} parts"
                    )));
                }
                let (fields, body) = entity(part).map_err(|line| DecodeError::PartMalformed {
                    index: index.clone(),
                    reason: format!("line {line} of its headers is not a header field"),
                })?;
                self.part(&fields, body, &index, depth + 1)?;
            }
            return Ok(());
        }
        let index = if index.is_empty() { "1" } else { index };
        let in_part = |source: DecodeError| DecodeError::Part {
            index: index.into(),
            source: Box::new(source),
        };
        let gzip = GZIP_TYPES.contains(&kind.as_str());
        if !(gzip || kind == "text/x-bootstage" || kind == "application/json") {
            return Ok(());
        }
        let encoding = header(fields, "content-transfer-encoding").map(str::to_ascii_lowercase);
        let (bytes, transfer) = match encoding.as_deref().map(str::trim) {
            None | Some("7bit" | "8bit" | "binary") => (body.to_vec(), false),
            Some("base64") => (base64(trim(body)).map_err(in_part)?, true),
            Some(_) => return Err(in_part(DecodeError::TransferEncoding)),
        };
        let ours = |map: Map<String, Value>| map.contains_key("bootstage").then_some(map);
        let params = if kind == "text/x-bootstage" {
            Some(decode_text(&bytes, false).map_err(in_part)?)
        } else if gzip {
            let layers = if transfer {
                Layers::Base64Gzip
            } else {
                Layers::Gzip
            };
            let plain = gunzip(&bytes, layers).map_err(in_part)?;
            match trim(&plain).starts_with(b"{") {
                true => json_value(trim(&plain), layers)
                    .map_err(in_part)?
                    .and_then(ours),
                false => None,
            }
        } else {
            let layers = if transfer {
                Layers::Base64
            } else {
                Layers::Plain
            };
            json_value(trim(&bytes), layers)
                .map_err(in_part)?
                .and_then(ours)
        };
        if let Some(params) = params {
            self.found.push((index.to_string(), params));
        }
        Ok(())
    }
}

/// A JSON document that must parse; `None` when it is not an object.
fn json_value(bytes: &[u8], layers: Layers) -> Result<Option<Map<String, Value>>, DecodeError> {
    match json_object(bytes, layers) {
        Ok(map) => Ok(Some(map)),
        Err(DecodeError::NotObject(..)) => Ok(None),
        Err(e) => Err(e),
    }
}

fn base64(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    // Drop line breaks and other whitespace, remembering where each kept byte stood so an
    // error can point into what the operator wrote.
    let (compact, origin): (Vec<u8>, Vec<usize>) = text
        .iter()
        .enumerate()
        .filter(|(_, b)| !b.is_ascii_whitespace())
        .map(|(i, &b)| (b, i))
        .unzip();
    let url_safe = compact.iter().any(|&b| b == b'-' || b == b'_');
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let engine = if url_safe {
        GeneralPurpose::new(&alphabet::URL_SAFE, config)
    } else {
        GeneralPurpose::new(&alphabet::STANDARD, config)
    };
    engine.decode(&compact).map_err(|e| match e {
        base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => {
            let at = origin[at];
            let line_start = text[..at]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |p| p + 1);
            DecodeError::Base64Char {
                line: 1 + text[..at].iter().filter(|&&b| b == b'\n').count(),
                column: 1 + at - line_start,
            }
        }
        base64::DecodeError::InvalidLength(_) => {
            DecodeError::Base64("its length is not possible for base64")
        }
        base64::DecodeError::InvalidPadding => DecodeError::Base64("its padding is wrong"),
    })
}

fn gunzip(bytes: &[u8], layers: Layers) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_DECOMPRESSED as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Gzip(layers, e.kind().to_string()))?;
    if out.len() > MAX_DECOMPRESSED {
        return Err(DecodeError::Decompressed(layers));
    }
    Ok(out)
}

fn json_object(bytes: &[u8], layers: Layers) -> Result<Map<String, Value>, DecodeError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(DecodeError::NotObject(layers, kind(&other))),
        Err(e) => Err(DecodeError::Json {
            layers,
            line: e.line(),
            column: e.column(),
            reason: json_reason(&e),
        }),
    }
}

/// serde_json's syntax and EOF messages are fixed phrases ("expected `:`", "trailing
/// characters") that never quote the input; data errors could, so those get no reason.
fn json_reason(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => {
            let text = e.to_string();
            let phrase = text.split(" at line ").next().unwrap_or_default();
            format!(" ({phrase})")
        }
        Category::Data | Category::Io => String::new(),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl ExitStatus for DecodeError {
    fn exit_code(&self) -> ExitCode {
        match self {
            // As for no user-data at all: nothing for bootstage was given.
            DecodeError::NoParameters => ExitCode::NoInput,
            _ => ExitCode::BadUserData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;
    use std::io::Write;

    const OURS: &str = r#"{"app":{"port":8080},"bootstage":{"sync":[]}}"#;
    const CLOUD_CONFIG: &str = "#cloud-config\nruncmd:\n  - echo hi\n";

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    /// A multipart message as Python's email module writes it (CRLF with `crlf`), each part
    /// given as (its header lines, its body).
    fn message(parts: &[(&str, Vec<u8>)], crlf: bool) -> Vec<u8> {
        let nl: &[u8] = if crlf { b"\r\n" } else { b"\n" };
        let mut out = Vec::new();
        let line = |out: &mut Vec<u8>, text: &[u8]| {
            out.extend_from_slice(text);
            out.extend_from_slice(nl);
        };
        line(
            &mut out,
            b"Content-Type: multipart/mixed; boundary=\"===============0123456789==\"",
        );
        line(&mut out, b"MIME-Version: 1.0");
        line(&mut out, b"");
        for (headers, body) in parts {
            line(&mut out, b"--===============0123456789==");
            for header in headers.lines() {
                line(&mut out, header.as_bytes());
            }
            line(&mut out, b"");
            line(&mut out, body);
        }
        line(&mut out, b"--===============0123456789==--");
        out
    }

    fn ours() -> Map<String, Value> {
        serde_json::from_str(OURS).unwrap()
    }

    fn cloud() -> (&'static str, Vec<u8>) {
        (
            "Content-Type: text/cloud-config; charset=\"us-ascii\"\nMIME-Version: 1.0",
            CLOUD_CONFIG.into(),
        )
    }

    #[test]
    fn mime_parts_that_are_bootstages() {
        let json = ("Content-Type: application/json", OURS.as_bytes().to_vec());
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cloud-init first", message(&[cloud(), json.clone()], false)),
            ("bootstage first", message(&[json.clone(), cloud()], false)),
            ("CRLF", message(&[cloud(), json.clone()], true)),
            (
                "text/x-bootstage, base64 of gzip inside",
                message(
                    &[
                        cloud(),
                        (
                            "Content-Type: text/x-bootstage",
                            STANDARD.encode(gzip(OURS.as_bytes())).into(),
                        ),
                    ],
                    false,
                ),
            ),
            (
                "text/x-bootstage without a bootstage key",
                message(
                    &[("content-type: TEXT/X-BOOTSTAGE", br#"{"a":1}"#.to_vec())],
                    false,
                ),
            ),
            (
                "Content-Transfer-Encoding: base64, any case, folded",
                message(
                    &[
                        cloud(),
                        (
                            "CONTENT-TYPE:\n application/json; charset=\"utf-8\"\ncontent-transfer-encoding: Base64",
                            STANDARD.encode(OURS).into(),
                        ),
                    ],
                    false,
                ),
            ),
            (
                "a gzip part",
                message(
                    &[
                        ("Content-Type: application/x-gzip", gzip(CLOUD_CONFIG.as_bytes())),
                        ("Content-Type: application/gzip", gzip(OURS.as_bytes())),
                    ],
                    false,
                ),
            ),
            (
                "a base64 gzip part",
                message(
                    &[(
                        "Content-Type: application/gzipped\nContent-Transfer-Encoding: base64",
                        STANDARD.encode(gzip(OURS.as_bytes())).into(),
                    )],
                    false,
                ),
            ),
            (
                "the whole message gzipped",
                gzip(&message(&[cloud(), json.clone()], true)),
            ),
            (
                "JSON parts without bootstage and non-objects are skipped",
                message(
                    &[
                        ("Content-Type: application/json", br#"{"eks":1}"#.to_vec()),
                        ("Content-Type: application/json", b"[1]".to_vec()),
                        json.clone(),
                    ],
                    false,
                ),
            ),
            (
                "nested multipart",
                message(
                    &[
                        cloud(),
                        (
                            "Content-Type: multipart/mixed; boundary=inner",
                            [
                                &b"--inner\n\n#!/bin/sh\n--inner\nContent-Type: application/json\n\n"[..],
                                OURS.as_bytes(),
                                b"\n--inner--",
                            ]
                            .concat(),
                        ),
                    ],
                    false,
                ),
            ),
        ];
        for (name, raw) in cases {
            let want = if name.contains("without a bootstage key") {
                serde_json::from_str(r#"{"a":1}"#).unwrap()
            } else {
                ours()
            };
            assert_eq!(decode(&raw), Ok(want), "{name}");
        }
    }

    #[test]
    fn mime_failures_name_the_part_and_no_value() {
        let json = ("Content-Type: application/json", OURS.as_bytes().to_vec());
        let part = |index: &str, source| DecodeError::Part {
            index: index.into(),
            source: Box::new(source),
        };
        let cases: Vec<(&str, Vec<u8>, DecodeError)> = vec![
            (
                "two candidates",
                message(
                    &[
                        json.clone(),
                        cloud(),
                        ("Content-Type: text/x-bootstage", b"{}".to_vec()),
                    ],
                    false,
                ),
                DecodeError::Candidates(vec!["1".into(), "3".into()]),
            ),
            (
                "no candidate",
                message(&[cloud()], false),
                DecodeError::NoParameters,
            ),
            (
                "bad JSON in a JSON part",
                message(
                    &[cloud(), ("Content-Type: application/json", b"{\"a\" 1}".to_vec())],
                    false,
                ),
                part(
                    "2",
                    DecodeError::Json {
                        layers: Layers::Plain,
                        line: 1,
                        column: 6,
                        reason: " (expected `:`)".into(),
                    },
                ),
            ),
            (
                "bad base64 transfer encoding",
                message(
                    &[(
                        "Content-Type: text/x-bootstage\nContent-Transfer-Encoding: base64",
                        b"eyJh!".to_vec(),
                    )],
                    false,
                ),
                part("1", DecodeError::Base64Char { line: 1, column: 5 }),
            ),
            (
                "quoted-printable",
                message(
                    &[(
                        "Content-Type: application/json\nContent-Transfer-Encoding: quoted-printable",
                        OURS.into(),
                    )],
                    false,
                ),
                part("1", DecodeError::TransferEncoding),
            ),
            (
                "a gzip part that is not gzip",
                message(&[("Content-Type: application/x-gzip", b"\x1f\x8bxx".to_vec())], false),
                part(
                    "1",
                    DecodeError::Gzip(Layers::Gzip, "unexpected end of file".into()),
                ),
            ),
            (
                "no closing boundary",
                message(std::slice::from_ref(&json), false)
                    .strip_suffix(b"--===============0123456789==--\n")
                    .unwrap()
                    .to_vec(),
                DecodeError::Mime("the closing boundary is missing (truncated?)".into()),
            ),
            (
                "wrong boundary",
                b"Content-Type: multipart/mixed; boundary=a\n\n--b\n\n{}\n--b--\n".to_vec(),
                DecodeError::Mime(
                    "the boundary its Content-Type names never occurs".into(),
                ),
            ),
            (
                "no boundary",
                b"Content-Type: multipart/mixed\n\n--b\n\n{}\n--b--\n".to_vec(),
                DecodeError::Mime(
                    "its Content-Type has no boundary of 1 to 70 characters".into(),
                ),
            ),
            (
                "a part's header is not a header",
                b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nsecret value\n\n{}\n--b--\n".to_vec(),
                DecodeError::PartMalformed {
                    index: "1".into(),
                    reason: "line 1 of its headers is not a header field".into(),
                },
            ),
            (
                "not MIME headers",
                b"key: value\nother: 1\n".to_vec(),
                DecodeError::Mime(
                    "the message has no MIME-Version or Content-Type header".into(),
                ),
            ),
            (
                "a header line broken",
                b"MIME-Version: 1.0\nsecret\n\n".to_vec(),
                DecodeError::Mime(
                    "line 2 of the message's headers is not a header field".into(),
                ),
            ),
            (
                "too many parts",
                gzip(&message(&vec![cloud(); MAX_PARTS + 1], false)),
                DecodeError::Mime(format!("it has more than {MAX_PARTS} parts")),
            ),
        ];
        for (name, raw, want) in cases {
            let got = decode(&raw);
            assert_eq!(got, Err(want), "{name}");
            let message = got.unwrap_err().to_string();
            for value in ["secret", "0123456789", "8080", "cloud-config", "runcmd"] {
                assert!(!message.contains(value), "{name}: {message}");
            }
        }
        assert_eq!(DecodeError::NoParameters.exit_code(), ExitCode::NoInput);
        assert_eq!(
            DecodeError::Candidates(vec![]).exit_code(),
            ExitCode::BadUserData
        );
        // A message says which parts, never what is in them.
        assert_eq!(
            DecodeError::Candidates(vec!["1".into(), "3".into()]).to_string(),
            "MIME parts 1, 3 all hold bootstage parameters; keep one"
        );
    }
}
