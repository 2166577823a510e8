//! Who this instance is, for what acts on it after the metadata stage (the lifecycle
//! watcher and notices, the status tags): `instance.json`, else IMDS, asked within 10 s
//! (a boot whose metadata stage failed has no `instance.json`).

use std::time::Duration;

use crate::base::retry::Deadline;
use crate::imds::{self, facts::Facts};
use crate::state::StateDir;

/// The instance's facts: `instance.json` when it names the instance, else IMDS's.
pub async fn whoami(state: &StateDir) -> Result<Facts, String> {
    if let Some(facts) = Facts::of(state)
        && facts.instance_id.is_some()
    {
        return Ok(facts);
    }
    let endpoint = imds::resolve_endpoint(None, |v| std::env::var(v).ok())?;
    let client = imds::Client::new(imds::Options {
        endpoint,
        v2_only: false,
        request_timeout: Duration::from_secs(2),
        deadline: Deadline::after(Duration::from_secs(10)),
    })
    .map_err(|e| e.to_string())?;
    Facts::from_imds(&client).await.map_err(|e| e.to_string())
}
