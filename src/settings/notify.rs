//! `bootstage.notify` (or the image's `/etc/bootstage/notify.json`): where a notice of
//! how the boot went is sent (`stage::notice` sends it). Values are never in a message: a
//! header value is a bearer token, a webhook URL often carries its own secret.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::{SettingsError, known};

/// `bootstage.notify`, or the image's fallback file.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub url: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub command: Option<String>,
    pub ready: bool,
    pub timeout: Option<Duration>,
}

impl Config {
    /// Reads the settings field by field. A message names the setting (`origin.key`) and
    /// what it should be, never its value: a header value is a bearer token, a webhook URL
    /// often carries its own secret.
    pub fn from_value(value: &Value, origin: &str) -> Result<Config, SettingsError> {
        let bad = |key: &str, why: &str| SettingsError(format!("{origin}.{key} {why}"));
        let Value::Object(map) = value else {
            return Err(SettingsError(format!("{origin} must be an object")));
        };
        let text = |key: &str| -> Result<Option<String>, SettingsError> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(bad(key, "must be a string")),
            }
        };
        known(
            map,
            origin,
            &["url", "headers", "command", "ready", "timeout"],
        )?;
        let mut config = Config::default();
        for (key, value) in map {
            match key.as_str() {
                "url" => config.url = text(key)?,
                "command" => config.command = text(key)?,
                "ready" => {
                    config.ready = match value {
                        Value::Bool(b) => *b,
                        Value::Null => false,
                        _ => return Err(bad(key, "must be true or false")),
                    }
                }
                "timeout" => {
                    let timeout = crate::base::duration::from_json(value)
                        .map_err(|why| bad(key, &format!("is {why}")))?;
                    config.timeout = Some(timeout);
                }
                "headers" => {
                    let Value::Object(headers) = value else {
                        return Err(bad(key, "must be an object of header names to strings"));
                    };
                    for (name, value) in headers {
                        let at = format!("headers.{name}");
                        if http::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                            return Err(bad(&at, "is not a valid header name"));
                        }
                        let Value::String(value) = value else {
                            return Err(bad(&at, "must be a string"));
                        };
                        if http::header::HeaderValue::from_str(value).is_err() {
                            return Err(bad(
                                &at,
                                "is not a valid header value (a control character or a line break)",
                            ));
                        }
                        config.headers.insert(name.clone(), value.clone());
                    }
                }
                _ => {} // known() refused every other key
            }
        }
        if let Some(url) = &config.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(SettingsError(format!(
                "{origin}.url must be http:// or https://"
            )));
        }
        Ok(config)
    }
}
