//! A version's endpoints as stored: the JSON array of `model_versions.endpoints`, each
//! `{"url", "weight", "upstream_api_key"?}` with its credential sealed by [`SecretKeys`] (the
//! API never sees it; the domain's [`Endpoint`] only says whether there is one).

use maas_domain::RepoError;
use maas_domain::inference::UpstreamSecret;
use maas_domain::serving::{Endpoint, EndpointWeight, Resolved};
use maas_domain::values::EndpointUrl;
use serde::{Deserialize, Serialize};

use crate::error::corrupt;
use crate::secrets::SecretKeys;

const COLUMN: &str = "model_versions.endpoints";

/// One element of the column. Not `Debug`: it holds a credential (sealed).
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEndpoint {
    url: String,
    weight: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upstream_api_key: Option<String>,
}

/// The elements of a stored value. serde's message is left out: it may quote the value.
fn parse(value: serde_json::Value) -> Result<Vec<StoredEndpoint>, RepoError> {
    serde_json::from_value(value)
        .map_err(|_| corrupt(COLUMN, "not an array of {url, weight, upstream_api_key?}"))
}

/// The endpoints of a stored `endpoints` value, each with its sealed credential.
pub(crate) fn read(value: serde_json::Value) -> Result<Vec<(Endpoint, Option<String>)>, RepoError> {
    let stored: Vec<StoredEndpoint> = parse(value)?;
    stored
        .into_iter()
        .map(|e| {
            let endpoint = Endpoint {
                url: EndpointUrl::parse(e.url).map_err(|e| corrupt(COLUMN, e))?,
                weight: EndpointWeight::parse_as("weight", e.weight)
                    .map_err(|e| corrupt(COLUMN, e))?,
                has_upstream_api_key: e.upstream_api_key.is_some(),
            };
            Ok((endpoint, e.upstream_api_key))
        })
        .collect()
}

/// The endpoints of a stored value as the domain shows them.
pub(crate) fn shown(value: serde_json::Value) -> Result<Vec<Endpoint>, RepoError> {
    Ok(read(value)?.into_iter().map(|(e, _)| e).collect())
}

/// The URLs and credentials of a stored value, opened, in order.
pub(crate) fn opened(
    value: serde_json::Value,
    secrets: &SecretKeys,
) -> Result<Vec<(EndpointUrl, Option<UpstreamSecret>)>, RepoError> {
    read(value)?
        .into_iter()
        .map(|(endpoint, sealed)| {
            let secret = sealed.map(|s| secrets.open(&s)).transpose()?;
            Ok((endpoint.url, secret))
        })
        .collect()
}

/// The value to store for `resolved`, new credentials sealed by `secrets`.
pub(crate) fn write(
    resolved: Vec<Resolved<String>>,
    secrets: &SecretKeys,
) -> Result<serde_json::Value, RepoError> {
    let stored = resolved
        .into_iter()
        .map(|r| {
            let (endpoint, upstream_api_key) = r.split(|secret| secrets.seal(&secret))?;
            Ok(StoredEndpoint {
                url: endpoint.url.as_str().to_owned(),
                weight: i64::from(endpoint.weight.get()),
                upstream_api_key,
            })
        })
        .collect::<Result<Vec<_>, RepoError>>()?;
    serde_json::to_value(stored).map_err(|e| RepoError::Internal(format!("{COLUMN}: {e}")))
}

/// `value` with every credential not sealed under the current key sealed again; `None` when
/// none needed it.
pub(crate) fn rotated(
    value: serde_json::Value,
    secrets: &SecretKeys,
) -> Result<Option<(serde_json::Value, usize)>, RepoError> {
    let mut stored = parse(value)?;
    let mut rewritten = 0;
    for endpoint in &mut stored {
        if let Some(sealed) = endpoint
            .upstream_api_key
            .as_mut()
            .filter(|s| !secrets.is_current(s))
        {
            *sealed = secrets.seal(&secrets.open(sealed)?)?;
            rewritten += 1;
        }
    }
    if rewritten == 0 {
        return Ok(None);
    }
    let value =
        serde_json::to_value(stored).map_err(|e| RepoError::Internal(format!("{COLUMN}: {e}")))?;
    Ok(Some((value, rewritten)))
}

/// How many credentials of a stored value are in plain text (written before encryption).
pub(crate) fn plaintext(value: serde_json::Value) -> Result<usize, RepoError> {
    Ok(read(value)?
        .into_iter()
        .filter(|(_, sealed)| {
            sealed
                .as_deref()
                .is_some_and(|s| !s.starts_with(crate::secrets::PREFIX))
        })
        .count())
}
