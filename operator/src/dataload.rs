//! The `DataLoad` reconciler: starts a prewarm job on the master for the named
//! Dataset (once, again when the spec changes, or at each time of a cron
//! schedule), mirrors the job's progress into `status` while it runs, and cancels
//! a running job when the resource is deleted.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{tz::TimeZone, Timestamp};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{finalizer, Event as Finalized};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use shoal_proto::master::{CancelLoadRequest, GetLoadRequest, LoadJob, LoadSpec, LoadState};
use tracing::{info, instrument};

use crate::crd::{DataLoad, DataLoadStatus, Dataset, LoadFailure, LoadPolicy};
use crate::dataset::master_name;
use crate::{condition, Ctx, Error};

pub const FINALIZER: &str = "shoal.io/cancel-load";
/// Failures listed in the status at most.
const FAILURES_SHOWN: usize = 20;

/// The master's load request for a resource.
pub fn load_spec(dl: &DataLoad, master_dataset: &str) -> LoadSpec {
    LoadSpec {
        dataset: master_dataset.to_string(),
        paths: dl.spec.paths.clone(),
        include: dl.spec.include.clone().unwrap_or_default(),
        replicas: dl.spec.replicas.unwrap_or(0),
        parallel: 0,
    }
}

/// When the next scheduled run is due after `after` (`policy: Cron`).
pub fn next_run(schedule: Option<&str>, after: Timestamp) -> Result<Timestamp, Error> {
    let schedule = schedule.ok_or_else(|| Error::Invalid("policy Cron needs spec.schedule".into()))?;
    let cron: croner::Cron =
        schedule.parse().map_err(|e| Error::Invalid(format!("spec.schedule {schedule:?}: {e}")))?;
    let next = cron
        .find_next_occurrence(&after.to_zoned(TimeZone::UTC), false)
        .map_err(|e| Error::Invalid(format!("spec.schedule {schedule:?}: {e}")))?;
    Ok(next.timestamp())
}

/// Copy a job's progress into a status.
pub fn mirror(status: &mut DataLoadStatus, job: &LoadJob) {
    let state = job.state();
    status.job_id = Some(job.id.clone());
    status.files_total = job.files_total;
    status.files_done = job.files_done;
    status.bytes_total = job.bytes_total;
    status.bytes_done = job.bytes_done;
    status.files_failed = job.files_failed;
    status.failures = job
        .failures
        .iter()
        .take(FAILURES_SHOWN)
        .map(|f| LoadFailure { path: f.path.clone(), error: f.error.clone() })
        .collect();
    status.progress = Some(format!("{}/{} files", job.files_done, job.files_total));
    let ms = |t: i64| (t > 0).then(|| Timestamp::from_millisecond(t).ok().map(Time)).flatten();
    status.start_time = ms(job.started_unix_ms);
    status.completion_time = ms(job.finished_unix_ms);
    status.phase = Some(
        match state {
            LoadState::Running | LoadState::Unspecified => "Running",
            LoadState::Completed if job.files_failed == 0 => "Complete",
            LoadState::Completed | LoadState::Failed => "Failed",
            LoadState::Cancelled => "Cancelled",
        }
        .into(),
    );
}

#[instrument(skip_all, fields(dataload = %dl.name_any(), ns = dl.namespace().unwrap_or_default()))]
pub async fn reconcile(dl: Arc<DataLoad>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let ns = dl.namespace().ok_or_else(|| Error::Invalid("a DataLoad must be namespaced".into()))?;
    let api: Api<DataLoad> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, dl.clone(), |event| async {
        match event {
            Finalized::Apply(dl) => apply(&api, &dl, &ctx).await,
            Finalized::Cleanup(dl) => cleanup(&dl, &ctx).await,
        }
    })
    .await;
    crate::metrics::count("DataLoad", result.is_ok());
    match result {
        Ok(action) => Ok(action),
        Err(e) => {
            let err = crate::unwrap_finalizer(e);
            tracing::warn!(error = %err, "reconcile failed");
            let prior = dl.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            let phase = if matches!(err, Error::MissingDataset(_)) { "Pending" } else { "Failed" };
            let status = json!({"status": {
                "phase": phase,
                "conditions": [condition(prior, "Ready", false, err.reason(), &err.to_string(), dl.metadata.generation)],
            }});
            if let Err(e) = api.patch_status(&dl.name_any(), &PatchParams::default(), &Patch::Merge(status)).await {
                tracing::warn!(error = %e, "cannot write the error into the status");
            }
            crate::publish_warning(&ctx, &dl.object_ref(&()), &err).await;
            Ok(if err.is_permanent() { Action::await_change() } else { Action::requeue(ctx.retry) })
        }
    }
}

async fn apply(api: &Api<DataLoad>, dl: &DataLoad, ctx: &Ctx) -> Result<Action, Error> {
    let ns = dl.namespace().unwrap_or_default();
    let mut status = dl.status.clone().unwrap_or_default();
    let mut master = ctx.master.clone();

    // Follow the current run.
    let mut running = false;
    if let Some(id) = status.job_id.clone() {
        match master.get_load(GetLoadRequest { id }).await {
            Ok(job) => {
                let job = job.into_inner();
                running = job.state() == LoadState::Running;
                mirror(&mut status, &job);
            }
            // The master lost the job (its state was wiped): start over.
            Err(s) if s.code() == tonic::Code::NotFound => status.job_id = None,
            Err(s) => return Err(Error::from_master(s)),
        }
    }

    let now = Timestamp::now();
    let spec_changed = status.observed_generation != dl.metadata.generation;
    let mut requeue = None;
    let start = match dl.spec.policy {
        LoadPolicy::Once => !running && (status.job_id.is_none() || spec_changed),
        LoadPolicy::Cron => {
            let since = status
                .last_schedule_time
                .as_ref()
                .map(|t| t.0)
                .or_else(|| dl.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or(now);
            let next = next_run(dl.spec.schedule.as_deref(), since)?;
            if next <= now && !running {
                true
            } else {
                let wait = next.duration_since(now).unsigned_abs().max(Duration::from_secs(1));
                requeue = Some(wait);
                if !running && status.job_id.is_some() && status.phase.as_deref() == Some("Complete") {
                    status.phase = Some("Waiting".into());
                }
                false
            }
        }
    };

    if start {
        Api::<Dataset>::namespaced(ctx.client.clone(), &ns)
            .get_opt(&dl.spec.dataset)
            .await?
            .ok_or_else(|| Error::MissingDataset(format!("Dataset {ns}/{} does not exist", dl.spec.dataset)))?;
        // From the names, never from status (which users may write), and only
        // a dataset of this namespace.
        let master_dataset = master_name(&ns, &dl.spec.dataset);
        let owner = master
            .get_dataset(shoal_proto::master::GetDatasetRequest { name: master_dataset.clone() })
            .await
            .map_err(Error::from_master)?;
        if owner.get_ref().namespace() != ns {
            return Err(Error::MasterRefused(format!(
                "the master's dataset {master_dataset:?} belongs to namespace {:?}, not {ns:?}",
                owner.get_ref().namespace()
            )));
        }
        let job = master.start_load(load_spec(dl, &master_dataset)).await.map_err(Error::from_master)?.into_inner();
        info!(job = %job.id, dataset = %master_dataset, "prewarm started");
        mirror(&mut status, &job);
        running = job.state() == LoadState::Running;
        if dl.spec.policy == LoadPolicy::Cron {
            status.last_schedule_time = Some(Time(now));
        }
    }
    status.observed_generation = dl.metadata.generation;
    let ok = !matches!(status.phase.as_deref(), Some("Failed"));
    let message = match status.phase.as_deref() {
        Some("Failed") => format!("{} files failed", status.files_failed),
        Some(p) => format!("{p}: {}", status.progress.clone().unwrap_or_default()),
        None => String::new(),
    };
    let prior = dl.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
    status.conditions = vec![condition(
        prior,
        "Ready",
        ok,
        if ok { "Loading" } else { "LoadFailed" },
        &message,
        dl.metadata.generation,
    )];
    api.patch_status(&dl.name_any(), &PatchParams::default(), &Patch::Merge(json!({ "status": status }))).await?;
    Ok(if running {
        Action::requeue(ctx.poll)
    } else {
        requeue.map(Action::requeue).unwrap_or_else(Action::await_change)
    })
}

async fn cleanup(dl: &DataLoad, ctx: &Ctx) -> Result<Action, Error> {
    let status = dl.status.clone().unwrap_or_default();
    if let (Some(id), Some("Running")) = (status.job_id, status.phase.as_deref()) {
        info!(job = %id, "cancelling the prewarm");
        match ctx.master.clone().cancel_load(CancelLoadRequest { id }).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(Error::from_master(s)),
        }
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::DataLoadSpec;

    #[test]
    fn cron_schedules_give_the_next_time_and_bad_ones_name_the_field() {
        let t: Timestamp = "2026-11-25T10:17:00Z".parse().unwrap();
        let next = next_run(Some("0 */6 * * *"), t).unwrap();
        assert_eq!(next.to_string(), "2026-11-25T12:00:00Z");
        let e = next_run(Some("every tuesday"), t).unwrap_err();
        assert!(e.is_permanent() && e.to_string().contains("spec.schedule"), "{e}");
        assert!(next_run(None, t).unwrap_err().to_string().contains("spec.schedule"));
    }

    #[test]
    fn a_job_is_mirrored_into_the_status() {
        let mut st = DataLoadStatus::default();
        let job = LoadJob {
            id: "j1".into(),
            state: LoadState::Completed as i32,
            files_total: 10,
            files_done: 9,
            files_failed: 1,
            failures: vec![shoal_proto::master::LoadFailure { path: "/a".into(), error: "gone".into() }],
            started_unix_ms: 1_700_000_000_000,
            finished_unix_ms: 1_700_000_005_000,
            ..Default::default()
        };
        mirror(&mut st, &job);
        assert_eq!(st.phase.as_deref(), Some("Failed"), "a run with failures did not complete");
        assert_eq!(st.progress.as_deref(), Some("9/10 files"));
        assert_eq!(st.failures, vec![LoadFailure { path: "/a".into(), error: "gone".into() }]);
        assert_eq!(st.completion_time.as_ref().unwrap().0.as_millisecond(), 1_700_000_005_000);
        let running = LoadJob { id: "j2".into(), state: LoadState::Running as i32, ..Default::default() };
        mirror(&mut st, &running);
        assert_eq!(st.phase.as_deref(), Some("Running"));
    }

    #[test]
    fn the_load_spec_names_the_master_dataset() {
        let dl = DataLoad::new(
            "l",
            DataLoadSpec {
                dataset: "imagenet".into(),
                paths: vec!["/train".into()],
                include: Some("**/*.JPEG".into()),
                replicas: Some(2),
                policy: LoadPolicy::Once,
                schedule: None,
            },
        );
        let s = load_spec(&dl, "ml.imagenet");
        assert_eq!(
            (s.dataset.as_str(), s.paths.as_slice(), s.include.as_str(), s.replicas),
            ("ml.imagenet", &["/train".to_string()][..], "**/*.JPEG", 2)
        );
    }
}
