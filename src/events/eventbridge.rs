//! EventBridge events that say a value bootstage resolves has changed, and whether one
//! names a reference or an import of this instance. Pure: no I/O.
//!
//! Three kinds, as EventBridge delivers them to an SQS target (the event is the body):
//! - Parameter Store: `"source": "aws.ssm"`, `"detail-type": "Parameter Store Change"`,
//!   `detail.name` (the parameter's name) and `detail.operation` (`Create`, `Update`,
//!   `Delete`, `LabelParameterVersion`: each can change what a reference resolves to);
//! - Secrets Manager rotation: `"source": "aws.secretsmanager"`, `"detail-type": "AWS
//!   Service Event via CloudTrail"`, `detail.eventName` `RotationSucceeded`, the secret's
//!   ARN in `detail.additionalEventData.SecretId`;
//! - Secrets Manager API calls that set a value: `"detail-type": "AWS API Call via
//!   CloudTrail"`, `detail.eventName` `PutSecretValue` (or `UpdateSecret`), the id as the
//!   caller wrote it (a name or an ARN) in `detail.requestParameters.secretId` and the
//!   full ARN in `detail.responseElements.arn`.
//!
//! Names are compared as Secrets Manager and SSM resolve them: a secret by its name, by
//! its full ARN (`…:secret:NAME-AbCdEf`) or a partial one (`…:secret:NAME`); a parameter
//! by its name with or without the leading `/`, by its ARN, with or without a
//! `:VERSION`/`:LABEL` selector; an imported path covers the parameters below it (all of
//! them when recursive, its children otherwise). A name that matches more than it should
//! costs one resolution that writes nothing; one that matched less would lose a rotation.
//! The event's body is untrusted and never logged.

use serde_json::Value;

/// What one event says changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// A Parameter Store parameter, by the name the event gives.
    Parameter(String),
    /// A Secrets Manager secret, by every id the event gives (names and ARNs).
    Secret(Vec<String>),
}

/// The Secrets Manager events whose secret's value may have changed.
const SECRET_EVENTS: &[&str] = &["RotationSucceeded", "PutSecretValue", "UpdateSecret"];

/// What `event` (a parsed message body) says changed; `None` when it is not one of the
/// three kinds.
pub fn changed(event: &Value) -> Option<Changed> {
    let text = |pointer: &str| event.pointer(pointer).and_then(Value::as_str);
    match (text("/source")?, text("/detail-type")?) {
        ("aws.ssm", "Parameter Store Change") => {
            Some(Changed::Parameter(text("/detail/name")?.to_string()))
        }
        (
            "aws.secretsmanager",
            "AWS Service Event via CloudTrail" | "AWS API Call via CloudTrail",
        ) if SECRET_EVENTS.contains(&text("/detail/eventName")?) => {
            let ids: Vec<String> = [
                "/detail/additionalEventData/SecretId",
                "/detail/requestParameters/secretId",
                "/detail/responseElements/arn",
                // Before February 2024 some events spelt it so.
                "/detail/responseElements/aRN",
                "/detail/serviceEventDetails/secretId",
            ]
            .iter()
            .filter_map(|p| text(p))
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect();
            (!ids.is_empty()).then_some(Changed::Secret(ids))
        }
        _ => None,
    }
}

/// The names this instance resolves: what an event must name to concern it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// Parameters, without a leading `/` or a selector.
    parameters: Vec<String>,
    /// Imported paths, without a leading `/`, ending in `/`; and whether recursive.
    paths: Vec<(String, bool)>,
    /// Secrets, by name (a full ARN's suffix kept and dropped, both).
    secrets: Vec<String>,
    /// Every parameter and secret (the names are not known yet).
    every: bool,
}

/// The prefix of a reference through SSM to a Secrets Manager secret.
const SECRET_THROUGH_SSM: &str = "/aws/reference/secretsmanager/";

impl Names {
    /// Names that contain every parameter and secret: what the watcher uses while it
    /// cannot read the parameters yet, so no event is lost meanwhile.
    pub fn everything() -> Names {
        Names {
            every: true,
            ..Names::default()
        }
    }

    /// One parameter's names.
    pub fn of_parameter(name: &str) -> Names {
        let mut names = Names::default();
        names.add_parameter(name);
        names
    }

    /// A reference's `{"ssm": …}`: a name, an ARN, either with a selector.
    pub fn add_parameter(&mut self, name: &str) {
        if let Some(secret) = name.strip_prefix(SECRET_THROUGH_SSM) {
            self.add_secret(secret.split(':').next().unwrap_or(secret));
            return;
        }
        self.parameters.push(parameter(name).to_string());
    }

    /// An import's `ssm_path`, with its `recursive`.
    pub fn add_path(&mut self, path: &str, recursive: bool) {
        let mut path = path.trim_start_matches('/').to_string();
        if !path.is_empty() && !path.ends_with('/') {
            path.push('/');
        }
        self.paths.push((path, recursive));
    }

    /// A reference's `{"secretsmanager": …}`: a name, a full or a partial ARN.
    pub fn add_secret(&mut self, id: &str) {
        self.secrets.extend(secret(id).map(str::to_string));
    }

    /// Whether there is anything to resolve again.
    pub fn is_empty(&self) -> bool {
        !self.every
            && self.parameters.is_empty()
            && self.paths.is_empty()
            && self.secrets.is_empty()
    }

    /// Whether `changed` names one of these.
    pub fn contain(&self, changed: &Changed) -> bool {
        if self.every {
            return true;
        }
        match changed {
            Changed::Parameter(name) => {
                let name = parameter(name);
                self.parameters.iter().any(|p| p == name)
                    || self.paths.iter().any(|(path, recursive)| {
                        name.strip_prefix(path.as_str()).is_some_and(|rest| {
                            !rest.is_empty() && (*recursive || !rest.contains('/'))
                        })
                    })
            }
            Changed::Secret(ids) => ids
                .iter()
                .flat_map(|id| secret(id))
                .any(|name| self.secrets.iter().any(|s| s == name)),
        }
    }
}

/// A parameter's name as compared: no ARN prefix, no leading `/`, no selector (a name
/// cannot hold a `:`).
fn parameter(name: &str) -> &str {
    let name = match name.split_once(":parameter") {
        Some((arn, rest)) if arn.starts_with("arn:") => rest,
        _ => name,
    };
    let name = name.trim_start_matches('/');
    name.split(':').next().unwrap_or(name)
}

/// A secret's names as compared: a plain name as it is; an ARN's name part, and that less
/// the `-` and six characters Secrets Manager appends (absent from a partial ARN).
fn secret(id: &str) -> impl Iterator<Item = &str> {
    let (name, arn) = match id.split_once(":secret:") {
        Some((arn, name)) if arn.starts_with("arn:") => (name, true),
        _ => (id, false),
    };
    let unsuffixed = name
        .rsplit_once('-')
        .filter(|(_, s)| arn && s.len() == 6 && s.bytes().all(|b| b.is_ascii_alphanumeric()))
        .map(|(base, _)| base);
    std::iter::once(name).chain(unsuffixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const PARAMETER: &str =
        include_str!("../../tests/fixtures/eventbridge/parameter-store-change.json");
    const ROTATION: &str =
        include_str!("../../tests/fixtures/eventbridge/secretsmanager-rotation-succeeded.json");
    const PUT: &str =
        include_str!("../../tests/fixtures/eventbridge/secretsmanager-put-secret-value.json");

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_three_kinds_are_read_from_their_real_shapes() {
        assert_eq!(
            changed(&parse(PARAMETER)),
            Some(Changed::Parameter("/rotation/db-password".into()))
        );
        let arn = "arn:aws:secretsmanager:us-east-1:123456789012:secret:rotation/api-token-Ab12Cd";
        assert_eq!(
            changed(&parse(ROTATION)),
            Some(Changed::Secret(vec![arn.into()]))
        );
        assert_eq!(
            changed(&parse(PUT)),
            Some(Changed::Secret(vec![
                "rotation/api-token".into(),
                arn.into()
            ]))
        );
    }

    #[test]
    fn other_events_change_nothing() {
        let with = |pointer: &str, value: Value| {
            let mut event = parse(ROTATION);
            *event.pointer_mut(pointer).unwrap() = value;
            changed(&event)
        };
        // Another Secrets Manager event, another source, another detail type.
        assert_eq!(with("/detail/eventName", json!("RotationStarted")), None);
        assert_eq!(with("/detail/eventName", json!("GetSecretValue")), None);
        assert_eq!(with("/source", json!("my.app")), None);
        assert_eq!(with("/detail-type", json!("Secret Label Updated")), None);
        assert_eq!(with("/detail/additionalEventData", json!(null)), None);
        let mut policy = parse(PARAMETER);
        policy["detail-type"] = json!("Parameter Store Policy Action");
        assert_eq!(changed(&policy), None);
        for other in [
            json!({"Records": [{"s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]}),
            json!({"sync": "all"}),
            json!({"source": "aws.ssm", "detail-type": "Parameter Store Change", "detail": {"name": 5}}),
            json!("text"),
        ] {
            assert_eq!(changed(&other), None, "{other}");
        }
    }

    fn names() -> Names {
        let mut n = Names::default();
        n.add_parameter("/shop/db-password");
        n.add_parameter("arn:aws:ssm:eu-west-1:123456789012:parameter/shop/host");
        n.add_parameter("/shop/ver:prod");
        n.add_parameter("plain-name:3");
        n.add_parameter("/aws/reference/secretsmanager/shop/through-ssm");
        n.add_path("/shop/app/", true);
        n.add_path("/shop/flat", false);
        n.add_secret("shop/api");
        n.add_secret("arn:aws:secretsmanager:us-east-1:123456789012:secret:shop/full-Xy12Zw");
        n.add_secret("arn:aws:secretsmanager:us-east-1:123456789012:secret:shop/partial");
        n
    }

    #[test]
    fn parameters_match_by_name_arn_selector_and_path() {
        let n = names();
        let p = |name: &str| n.contain(&Changed::Parameter(name.into()));
        let cases = [
            ("/shop/db-password", true),
            ("shop/db-password", true),
            ("/shop/db-password-old", false),
            ("/shop/host", true),
            ("/shop/ver", true),
            ("plain-name", true),
            ("/plain-name", true),
            ("/shop/app/db/password", true),
            ("/shop/app/x", true),
            ("/shop/app", false),
            ("/shop/apps/x", false),
            ("/shop/flat/x", true),
            ("/shop/flat/deeper/x", false),
            ("/shop/other", false),
            ("", false),
        ];
        for (name, expected) in cases {
            assert_eq!(p(name), expected, "{name}");
        }
    }

    #[test]
    fn secrets_match_by_name_or_arn_full_or_partial() {
        let n = names();
        let s = |ids: &[&str]| {
            n.contain(&Changed::Secret(
                ids.iter().map(|s| s.to_string()).collect(),
            ))
        };
        let arn =
            |name: &str| format!("arn:aws:secretsmanager:us-east-1:123456789012:secret:{name}");
        let cases = [
            (vec!["shop/api".to_string()], true),
            (vec![arn("shop/api-Ab12Cd")], true),
            (vec![arn("shop/api-extra-Ab12Cd")], false),
            (vec!["shop/api-extra".to_string()], false),
            (vec![arn("shop/full-Xy12Zw")], true),
            (vec!["shop/full".to_string()], true),
            (vec![arn("shop/full-Zz99Zz")], true),
            (vec![arn("shop/partial-Qq11Qq")], true),
            (vec!["shop/partial".to_string()], true),
            (vec![arn("shop/through-ssm-Rr22Rr")], true),
            (
                vec!["unrelated".to_string(), arn("unrelated-Ab12Cd")],
                false,
            ),
            (vec!["unrelated".to_string(), arn("shop/api-Ab12Cd")], true),
        ];
        for (ids, expected) in cases {
            let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
            assert_eq!(s(&ids), expected, "{ids:?}");
        }
        // The fixtures against names that are and are not theirs.
        let mut theirs = Names::default();
        theirs.add_secret("rotation/api-token");
        theirs.add_parameter("/rotation/db-password");
        let mut other = Names::default();
        other.add_secret("rotation/api");
        other.add_parameter("/rotation/db");
        other.add_path("/rotation/db-password/", true);
        for fixture in [PARAMETER, ROTATION, PUT] {
            let c = changed(&parse(fixture)).unwrap();
            assert!(theirs.contain(&c), "{c:?}");
            assert!(!other.contain(&c), "{c:?}");
        }
        assert!(Names::default().is_empty());
        assert!(!theirs.is_empty());
        let every = Names::everything();
        assert!(!every.is_empty());
        assert!(every.contain(&Changed::Parameter("/anything".into())));
        assert!(every.contain(&Changed::Secret(vec!["anything".into()])));
    }
}
