//! The extender's and the webhook's JSON: arbitrary bodies are parsed, and what
//! parses is filtered, scored and mutated without a panic; scores stay in 0..=10.
#![no_main]

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionReview};
use libfuzzer_sys::fuzz_target;
use shoal_scheduler::extender::{self, ExtenderArgs};
use shoal_scheduler::score::{CacheView, DatasetCache, Weights};
use shoal_scheduler::state::State;

fn state() -> State {
    let state = State::default();
    let mut view = CacheView::default();
    view.datasets.insert(
        "ml.imagenet".into(),
        DatasetCache { total_bytes: 1000, nodes: [("a".to_string(), 600u64), ("b".to_string(), 300)].into() },
    );
    state.set_cache(view);
    let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "imagenet", "namespace": "ml",
                     "labels": {"shoal.io/dataset-namespace": "ml", "shoal.io/dataset": "imagenet"}}
    }))
    .expect("pvc");
    state.apply_pvc(&pvc);
    state
}

fuzz_target!(|data: &[u8]| {
    let state = state();
    if let Ok(args) = serde_json::from_slice::<ExtenderArgs>(data) {
        let _ = extender::filter(&state, &args);
        for p in extender::prioritize(&state, &args, Weights::default()) {
            assert!((0..=10).contains(&p.score), "score {} out of range", p.score);
        }
        state.apply_pod(&args.pod);
    }
    if let Ok(review) = serde_json::from_slice::<AdmissionReview<Pod>>(data) {
        let req: Result<AdmissionRequest<Pod>, _> = review.try_into();
        if let Ok(req) = req {
            if let Some(pod) = req.object.as_ref() {
                let _ = shoal_scheduler::webhook::mutate(&state, pod);
            }
        }
    }
});
