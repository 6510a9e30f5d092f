//! The job table's tests: progress rules, throttling, restarts and retention over an in-memory store.

use super::*;
use crate::events::EventBus;
use crate::service::Clock;

fn service() -> Arc<Service> {
    Arc::new(Service::in_memory(Clock::system(), EventBus::new(10_000, 1)))
}

/// Polls until `f` holds, for at most 10 s.
async fn until(mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn stored(svc: &Service, id: Uuid) -> Option<Job> {
    let bytes = svc.repo().store().get_meta(&format!("{JOB_META}{id}")).unwrap()?;
    Some(serde_json::from_slice::<Record>(&bytes).unwrap().job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_job_sends_few_events_and_ends_persisted() {
    let svc = service();
    let dir = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        event_interval: Duration::from_secs(3600),
        retention: Duration::from_secs(3600),
    };
    let jobs = Jobs::open(svc.clone(), dir.path(), config).unwrap();
    let mut events = svc.events.subscribe(None).live;
    let (id, _) = jobs.prepare().unwrap();
    jobs.submit(
        id,
        JobKind::Import,
        None,
        Box::new(|ctx| {
            for i in 0..=10_000 {
                ctx.progress("reading", i, 10_000);
            }
            for i in 0..=10_000 {
                ctx.progress("importing", i, 10_000);
            }
            Ok(Done {
                result: json_result(),
                message: Some("done".into()),
                file: None,
            })
        }),
    );
    until(|| jobs.get(id).is_some_and(|j| j.state == JobState::Completed)).await;
    let mut seen = Vec::new();
    while let Ok(e) = events.try_recv() {
        assert_eq!(e.kind, "job.updated");
        let data: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        seen.push((data["state"].clone(), data["stage"].clone()));
    }
    // queued, running, reading, importing, completed — not 20,000.
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(seen.last().unwrap().0, "completed");
    let done = stored(&svc, id).unwrap();
    assert_eq!(
        (done.state, done.current, done.total),
        (JobState::Completed, 10_000, 10_000)
    );
    assert!(
        done.result.unwrap()["rows"].is_array(),
        "the record keeps the whole result"
    );
    // The table does not hold the finished result; requests read it back,
    // and so do they after a restart.
    {
        let table = jobs.lock();
        let entry = table.get(&id).unwrap();
        assert!(entry.result_stored && entry.record.job.result.is_none());
    }
    assert_eq!(jobs.get(id).unwrap().result, Some(json_result()));
    let listed = jobs.list(None, Page::default());
    assert_eq!(listed.items[0].result, Some(json_result()));
    assert_eq!(jobs.file(id).unwrap().0.result, Some(json_result()));
    let reopened = Jobs::open(svc.clone(), dir.path(), config).unwrap();
    assert!(reopened.lock().get(&id).unwrap().record.job.result.is_none());
    assert_eq!(reopened.get(id).unwrap().result, Some(json_result()));
}

fn json_result() -> Value {
    serde_json::json!({"rows": [1, 2, 3]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_shows_a_running_job_interrupted_with_its_progress() {
    let svc = service();
    let dir = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        event_interval: Duration::ZERO,
        retention: Duration::from_secs(3600),
    };
    let first = Jobs::open(svc.clone(), dir.path(), config).unwrap();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let (id, _) = first.prepare().unwrap();
    first.submit(
        id,
        JobKind::Import,
        None,
        Box::new(move |ctx| {
            ctx.partial_result(serde_json::json!({"operation_id": "op-7"}));
            ctx.progress("importing", 40, 100);
            let _ = wait.recv();
            Err(Failure::new("released"))
        }),
    );
    until(|| first.get(id).is_some_and(|j| j.current == 40)).await;
    // A second table over the same store is what a restart sees.
    let second = Jobs::open(svc.clone(), dir.path(), config).unwrap();
    let job = second.get(id).unwrap();
    assert_eq!(job.state, JobState::Interrupted);
    assert_eq!(
        (job.stage.as_deref(), job.current, job.total),
        (Some("importing"), 40, 100)
    );
    let message = job.message.unwrap();
    assert!(message.contains("op-7"), "{message}");
    assert_eq!(
        stored(&svc, id).unwrap().state,
        JobState::Interrupted,
        "persisted"
    );
    let _ = release.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_and_their_files_expire() {
    let svc = service();
    let dir = tempfile::tempdir().unwrap();
    let config = JobsConfig {
        event_interval: Duration::ZERO,
        retention: Duration::from_millis(200),
    };
    let jobs = Jobs::open(svc.clone(), dir.path(), config).unwrap();
    let (id, job_dir) = jobs.prepare().unwrap();
    std::fs::write(job_dir.join("upload"), b"x").unwrap();
    // A directory no job owns (a crash mid-upload) goes at the next start.
    let orphan = dir.path().join(Uuid::new_v4().to_string());
    std::fs::create_dir(&orphan).unwrap();
    jobs.submit(id, JobKind::Export, None, Box::new(|_| Err(Failure::new("no"))));
    until(|| jobs.get(id).is_none()).await;
    assert!(!job_dir.exists());
    assert!(stored(&svc, id).is_none());
    let _again = Jobs::open(svc.clone(), dir.path(), config).unwrap();
    assert!(!orphan.exists());
}

fn running(kind: JobKind) -> Job {
    let mut job = Job::new(Uuid::new_v4(), kind, None, Timestamp(1));
    job.state = JobState::Running;
    job
}

#[test]
fn progress_moves_only_forward_within_the_declared_stages() {
    let mut job = running(JobKind::Import);
    let t = Timestamp(2);
    assert_eq!(job.advance("reading", 10, 100, t), Ok(true));
    assert_eq!(job.advance("reading", 50, 100, t), Ok(false));
    assert_eq!(job.advance("importing", 0, 20, t), Ok(true));
    assert!(matches!(
        job.advance("reading", 100, 100, t),
        Err(ProgressError::Backwards { .. })
    ));
    assert!(matches!(
        job.advance("importing", 21, 20, t),
        Err(ProgressError::OverTotal {
            current: 21,
            total: 20
        })
    ));
    assert!(matches!(
        job.advance("saving", 0, 1, t),
        Err(ProgressError::UnknownStage { .. })
    ));
    assert_eq!(
        (job.stage.as_deref(), job.current, job.total),
        (Some("importing"), 0, 20)
    );

    let mut queued = Job::new(Uuid::new_v4(), JobKind::Export, None, t);
    assert!(matches!(
        queued.advance("writing", 0, 1, t),
        Err(ProgressError::NotRunning {
            state: JobState::Queued
        })
    ));
}

#[test]
fn an_interrupted_import_says_how_to_recover() {
    let mut job = running(JobKind::Import);
    job.advance("importing", 500, 2000, Timestamp(2)).unwrap();
    job.result = Some(serde_json::json!({"operation_id": "op-1"}));
    let m = interrupted_message(&job);
    assert!(
        m.contains("importing (500 of 2000)") && m.contains("operation op-1"),
        "{m}"
    );
}
