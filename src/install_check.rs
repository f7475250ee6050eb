//! At start-up: are our CRDs installed, and established, in the cluster we talk to?

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{Api, Client};

/// Why the operator cannot start on this cluster.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the CustomResourceDefinition {name} is not installed: install the CRDs with `kubectl apply -f crds/` from the Peregrine repository, or `peregrine crd | kubectl apply --server-side -f -`"
    )]
    Missing { name: String },
    #[error(
        "the CustomResourceDefinition {name} is installed but not Established yet ({reason}): check `kubectl describe crd {name}`"
    )]
    NotEstablished { name: String, reason: String },
    #[error(
        "the installed CustomResourceDefinition {name} does not serve version {version}: upgrade the CRDs with `peregrine crd | kubectl apply --server-side -f -`"
    )]
    VersionNotServed { name: String, version: String },
    #[error("cannot read CustomResourceDefinition {name} from the API server: {source}")]
    Api {
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Checks that every CRD this binary needs is installed, established and serving our version.
pub async fn check_crds(client: &Client) -> Result<(), InstallError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for wanted in crate::crd::all() {
        let name = wanted.metadata.name.clone().unwrap_or_default();
        let found = api
            .get_opt(&name)
            .await
            .map_err(|source| InstallError::Api {
                name: name.clone(),
                source,
            })?;
        let Some(found) = found else {
            return Err(InstallError::Missing { name });
        };
        check_one(&wanted, &found)?;
    }
    Ok(())
}

fn check_one(
    wanted: &CustomResourceDefinition,
    found: &CustomResourceDefinition,
) -> Result<(), InstallError> {
    let name = wanted.metadata.name.clone().unwrap_or_default();
    for version in &wanted.spec.versions {
        let served = found
            .spec
            .versions
            .iter()
            .any(|v| v.name == version.name && v.served);
        if !served {
            return Err(InstallError::VersionNotServed {
                name,
                version: version.name.clone(),
            });
        }
    }
    let established = found
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Established"));
    match established {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(InstallError::NotEstablished {
            name,
            reason: c.message.clone().unwrap_or_else(|| c.status.clone()),
        }),
        None => Err(InstallError::NotEstablished {
            name,
            reason: "no Established condition".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceDefinitionCondition, CustomResourceDefinitionStatus,
    };

    fn established(mut crd: CustomResourceDefinition, status: &str) -> CustomResourceDefinition {
        crd.status = Some(CustomResourceDefinitionStatus {
            conditions: Some(vec![CustomResourceDefinitionCondition {
                type_: "Established".into(),
                status: status.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        crd
    }

    #[test]
    fn an_established_crd_passes() {
        let crd = crate::crd::all().remove(0);
        assert!(check_one(&crd, &established(crd.clone(), "True")).is_ok());
    }

    #[test]
    fn a_crd_not_yet_established_is_reported() {
        let crd = crate::crd::all().remove(0);
        let err = check_one(&crd, &established(crd.clone(), "False")).unwrap_err();
        assert!(matches!(err, InstallError::NotEstablished { .. }), "{err}");
    }

    #[test]
    fn an_old_crd_without_our_version_says_to_upgrade() {
        let crd = crate::crd::all().remove(0);
        let mut old = established(crd.clone(), "True");
        old.spec.versions[0].name = "v1alpha0".into();
        let err = check_one(&crd, &old).unwrap_err();
        assert!(err.to_string().contains("upgrade the CRDs"), "{err}");
    }
}
