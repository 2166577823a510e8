//! Decoding user-data into the parameters object.
//!
//! Accepted forms, tried in this order after trimming surrounding whitespace:
//! 1. a JSON object as-is (it starts with `{`);
//! 2. gzip (starts with 1f 8b), then JSON;
//! 3. base64 (standard or URL-safe alphabet, padded or not, wrapped over lines), then
//!    gzip if the decoded bytes start with 1f 8b, then JSON.
//!
//! The result must be a JSON object. Every error names the step that failed and a position,
//! and never echoes any of the content: user-data carries secrets.

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

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];

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
}

/// Decodes raw user-data into the parameters object.
pub fn decode(raw: &[u8]) -> Result<Map<String, Value>, DecodeError> {
    if raw.len() > MAX_RAW {
        return Err(DecodeError::TooLarge(raw.len()));
    }
    if raw.starts_with(GZIP_MAGIC) {
        return json_object(&gunzip(raw, Layers::Gzip)?, Layers::Gzip);
    }
    let text = raw.trim_ascii();
    let text = text
        .strip_prefix(b"\xef\xbb\xbf")
        .unwrap_or(text)
        .trim_ascii();
    match text.first() {
        None => Err(DecodeError::Empty),
        Some(b'{') => json_object(text, Layers::Plain),
        Some(b'#') => Err(DecodeError::Script),
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
        ExitCode::BadUserData
    }
}
