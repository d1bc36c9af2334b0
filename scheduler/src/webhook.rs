//! The mutating admission webhook, for clusters whose scheduler cannot be
//! extended: a pod that mounts shoal datasets gets node affinity towards the nodes
//! caching them (preferred; required with the annotation), and its mounts of
//! those volumes get `HostToContainer` propagation, so a FUSE mount the CSI
//! plugin restarts shows up in the running container.

use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod, PreferredSchedulingTerm,
};

use crate::state::State;

/// Pod annotation: `required` makes the injected affinity a requirement.
pub const AFFINITY_ANNOTATION: &str = "shoal.io/affinity";

/// The pod as it should be admitted, or `None` when it mounts no shoal dataset.
pub fn mutate(state: &State, pod: &Pod) -> Option<Pod> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let datasets = state.datasets_of(pod);
    if datasets.is_empty() {
        return None;
    }
    let mut out = pod.clone();
    let required = pod.metadata.annotations.as_ref().and_then(|a| a.get(AFFINITY_ANNOTATION)).map(String::as_str)
        == Some("required");
    let exprs: Vec<NodeSelectorRequirement> = datasets
        .iter()
        .map(|d| NodeSelectorRequirement {
            key: shoal_core::ids::dataset_node_label(d),
            operator: "Exists".into(),
            values: None,
        })
        .collect();
    let spec = out.spec.get_or_insert_with(Default::default);
    let na =
        spec.affinity.get_or_insert_with(Affinity::default).node_affinity.get_or_insert_with(NodeAffinity::default);
    if required {
        // Terms are ORed: every existing term must also hold the dataset labels.
        let sel = na
            .required_during_scheduling_ignored_during_execution
            .get_or_insert_with(|| NodeSelector { node_selector_terms: vec![] });
        if sel.node_selector_terms.is_empty() {
            sel.node_selector_terms.push(NodeSelectorTerm::default());
        }
        for term in &mut sel.node_selector_terms {
            let have = term.match_expressions.get_or_insert_with(Vec::new);
            for e in &exprs {
                if !have.iter().any(|h| h.key == e.key) {
                    have.push(e.clone());
                }
            }
        }
    } else {
        let preferred = na.preferred_during_scheduling_ignored_during_execution.get_or_insert_with(Vec::new);
        for e in &exprs {
            let present =
                preferred.iter().any(|p| p.preference.match_expressions.iter().flatten().any(|h| h.key == e.key));
            if !present {
                preferred.push(PreferredSchedulingTerm {
                    weight: 100,
                    preference: NodeSelectorTerm { match_expressions: Some(vec![e.clone()]), match_fields: None },
                });
            }
        }
    }
    // Mount propagation for the volumes backed by shoal claims.
    let shoal_volumes: Vec<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| {
            v.persistent_volume_claim.as_ref().is_some_and(|c| state.dataset_of_claim(&ns, &c.claim_name).is_some())
        })
        .map(|v| v.name.clone())
        .collect();
    for c in spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten()) {
        for m in c.volume_mounts.iter_mut().flatten() {
            if shoal_volumes.contains(&m.name) && m.mount_propagation.is_none() {
                m.mount_propagation = Some("HostToContainer".into());
            }
        }
    }
    Some(out)
}
