//! Is a pod reachable from outside the cluster? A LoadBalancer or NodePort
//! Service, a Service with external IPs, or an Ingress backend selects it.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use std::collections::BTreeMap;

/// True when a Service of the pod's namespace selects the pod and is exposed
/// itself (LoadBalancer, NodePort, external IPs) or is the backend of an Ingress.
pub fn is_exposed<'a>(
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    services: impl IntoIterator<Item = &'a Service>,
    ingresses: impl IntoIterator<Item = &'a Ingress> + Clone,
) -> bool {
    services.into_iter().any(|svc| {
        exposes(svc, namespace, pod_labels, |name| {
            ingresses
                .clone()
                .into_iter()
                .any(|ing| routes_to(ing, namespace, name))
        })
    })
}

/// True when `svc` selects the pod and is exposed itself, or `routed(name)`
/// says an Ingress sends traffic to it.
pub fn exposes(
    svc: &Service,
    namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    routed: impl FnOnce(&str) -> bool,
) -> bool {
    svc.metadata.namespace.as_deref() == Some(namespace)
        && selects(svc, pod_labels)
        && (externally_typed(svc) || svc.metadata.name.as_deref().is_some_and(routed))
}

fn selects(svc: &Service, pod_labels: &BTreeMap<String, String>) -> bool {
    // A Service without a selector has hand-made endpoints: nothing to match on.
    match svc.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(selector) if !selector.is_empty() => {
            selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
        }
        _ => false,
    }
}

fn externally_typed(svc: &Service) -> bool {
    let Some(spec) = svc.spec.as_ref() else {
        return false;
    };
    matches!(spec.type_.as_deref(), Some("LoadBalancer" | "NodePort"))
        || spec
            .external_ips
            .as_ref()
            .is_some_and(|ips| !ips.is_empty())
}

/// True when Ingress `ing` of `namespace` has Service `service` as a backend.
pub fn routes_to(ing: &Ingress, namespace: &str, service: &str) -> bool {
    if ing.metadata.namespace.as_deref() != Some(namespace) {
        return false;
    }
    let Some(spec) = ing.spec.as_ref() else {
        return false;
    };
    let default = spec
        .default_backend
        .as_ref()
        .and_then(|b| b.service.as_ref())
        .is_some_and(|s| s.name == service);
    default
        || spec.rules.iter().flatten().any(|rule| {
            rule.http.iter().any(|http| {
                http.paths.iter().any(|p| {
                    p.backend
                        .service
                        .as_ref()
                        .is_some_and(|s| s.name == service)
                })
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(name: &str, type_: &str, selector: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"type": type_, "selector": selector, "ports": [{"port": 80}]}
        }))
        .unwrap()
    }

    fn ingress_to(service: &str) -> Ingress {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"rules": [{"host": "shop.example.com", "http": {"paths": [
                {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": service, "port": {"number": 80}}}}
            ]}}]}
        }))
        .unwrap()
    }

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app".into(), "web".into()),
            ("tier".into(), "front".into()),
        ])
    }

    #[test]
    fn a_load_balancer_selecting_the_pod_exposes_it() {
        let svcs = [service("web", "LoadBalancer", json!({"app": "web"}))];
        assert!(is_exposed("shop", &labels(), &svcs, &[] as &[Ingress]));
    }

    #[test]
    fn a_cluster_ip_service_exposes_only_through_an_ingress() {
        let svcs = [service("web", "ClusterIP", json!({"app": "web"}))];
        assert!(!is_exposed("shop", &labels(), &svcs, &[] as &[Ingress]));
        assert!(is_exposed("shop", &labels(), &svcs, &[ingress_to("web")]));
        assert!(!is_exposed(
            "shop",
            &labels(),
            &svcs,
            &[ingress_to("other")]
        ));
    }

    #[test]
    fn services_that_do_not_select_the_pod_or_live_elsewhere_do_not_count() {
        let svcs = [
            service("db", "NodePort", json!({"app": "db"})),
            service("empty", "LoadBalancer", json!({})),
        ];
        assert!(!is_exposed("shop", &labels(), &svcs, &[] as &[Ingress]));
        assert!(!is_exposed(
            "other",
            &labels(),
            &[service("web", "LoadBalancer", json!({"app": "web"}))],
            &[] as &[Ingress]
        ));
    }
}
