//! The kube-scheduler extender API (`filter`, `prioritize`): the JSON kube-scheduler
//! sends (`ExtenderArgs`) and expects back (`ExtenderFilterResult`, a list of
//! `HostPriority`), answered from [`State`] without any remote call.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::{Deserialize, Serialize};

use crate::score::{self, Gpus, Weights};
use crate::state::{State, GPU_RESOURCE};

/// Pod annotation: `"true"` lets only nodes that cache part of the pod's datasets
/// pass `filter`.
pub const REQUIRE_CACHE_ANNOTATION: &str = "shoal.io/require-cache";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NodeList {
    #[serde(default)]
    pub items: Vec<Node>,
}

/// What kube-scheduler sends: full nodes (`nodeCacheCapable: false`) or names.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ExtenderArgs {
    #[serde(alias = "Pod")]
    pub pod: Pod,
    #[serde(default, alias = "Nodes", skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeList>,
    #[serde(default, alias = "NodeNames", skip_serializing_if = "Option::is_none")]
    pub nodenames: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ExtenderFilterResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodeList>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodenames: Option<Vec<String>>,
    #[serde(rename = "failedNodes", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_nodes: BTreeMap<String, String>,
    #[serde(rename = "failedAndUnresolvableNodes", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failed_and_unresolvable_nodes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl PartialEq for NodeList {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct HostPriority {
    pub host: String,
    pub score: i64,
}

/// The candidate nodes as (name, node object if sent).
fn candidates(args: &ExtenderArgs) -> Vec<(String, Option<&Node>)> {
    match (&args.nodes, &args.nodenames) {
        (Some(list), _) => list.items.iter().map(|n| (n.metadata.name.clone().unwrap_or_default(), Some(n))).collect(),
        (None, Some(names)) => names.iter().map(|n| (n.clone(), None)).collect(),
        (None, None) => vec![],
    }
}

fn gpus_of(state: &State, name: &str, node: Option<&Node>) -> Gpus {
    let allocatable = node
        .and_then(|n| n.status.as_ref())
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get(GPU_RESOURCE))
        .and_then(|q| q.0.parse().ok())
        .unwrap_or(0);
    Gpus { allocatable, requested: state.gpus_requested(name) }
}

/// `filter`: with the require-cache annotation, only nodes caching part of the
/// pod's datasets pass; other pods pass everywhere (kube-scheduler checks
/// resources itself).
pub fn filter(state: &State, args: &ExtenderArgs) -> ExtenderFilterResult {
    let require =
        args.pod.metadata.annotations.as_ref().and_then(|a| a.get(REQUIRE_CACHE_ANNOTATION)).map(String::as_str)
            == Some("true");
    let needs = state.needs(&args.pod);
    let view = state.cache();
    let names: Vec<String> = candidates(args).into_iter().map(|(name, _)| name).collect();
    let passes: Vec<bool> = names
        .iter()
        .map(|name| !require || needs.datasets.is_empty() || view.local_share(&needs.datasets, name) > 0.0)
        .collect();
    let failed_nodes = names
        .iter()
        .zip(&passes)
        .filter(|(_, pass)| !**pass)
        .map(|(name, _)| (name.clone(), format!("caches none of {}", needs.datasets.join(", "))))
        .collect();
    let mut out = ExtenderFilterResult { failed_nodes, ..Default::default() };
    // Candidates are in the order they were sent: keep those that pass.
    match &args.nodes {
        Some(list) => {
            let items = list.items.iter().zip(&passes).filter(|(_, pass)| **pass).map(|(n, _)| n.clone()).collect();
            out.nodes = Some(NodeList { items });
        }
        None => out.nodenames = Some(names.into_iter().zip(passes).filter(|(_, pass)| *pass).map(|(n, _)| n).collect()),
    }
    out
}

/// `prioritize`: every candidate's score, 0..=10.
pub fn prioritize(state: &State, args: &ExtenderArgs, weights: Weights) -> Vec<HostPriority> {
    let needs = state.needs(&args.pod);
    let view = state.cache();
    let nodes: Vec<(String, Gpus)> =
        candidates(args).into_iter().map(|(name, node)| (name.clone(), gpus_of(state, &name, node))).collect();
    let refs: Vec<(&str, Gpus)> = nodes.iter().map(|(n, g)| (n.as_str(), *g)).collect();
    score::score_nodes(&view, &needs, &refs, weights)
        .into_iter()
        .zip(nodes)
        .map(|(score, (host, _))| HostPriority { host, score })
        .collect()
}
