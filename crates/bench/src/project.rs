//! The benchmark's project, built through the daemon's own interfaces: a
//! piping project of drawings of 50 components each — spools, field welds,
//! supports and pipe footage with real rules of credit — imported as a CSV
//! (the way a field team brings one in), then given a seeded mix of
//! progress through bulk updates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sitesync_tests::Client;

/// A component's kind, by the position in its drawing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Spool,
    Weld,
    Support,
    Pipe,
}

impl Kind {
    /// 15 spools, 20 welds, 10 supports and 5 pipe runs in every 50.
    fn at(position: usize) -> Self {
        match position % 50 {
            0..15 => Self::Spool,
            15..35 => Self::Weld,
            35..45 => Self::Support,
            _ => Self::Pipe,
        }
    }

    fn of_tag(tag: &str) -> Option<Self> {
        Some(match tag.split('-').next()? {
            "SP" => Self::Spool,
            "FW" => Self::Weld,
            "PS" => Self::Support,
            "PIPE" => Self::Pipe,
            _ => return None,
        })
    }
}

/// The templates (name, workflow, milestones with weights).
fn templates() -> Vec<Value> {
    vec![
        json!({"name": "Spool", "workflow_type": "discrete", "milestones": [
            {"key": "receive", "name": "Receive", "weight": 5}, {"key": "erect", "name": "Erect", "weight": 35},
            {"key": "connect", "name": "Connect", "weight": 30}, {"key": "support", "name": "Support", "weight": 15},
            {"key": "punch", "name": "Punch", "weight": 5}, {"key": "test", "name": "Test", "weight": 5},
            {"key": "restore", "name": "Restore", "weight": 5}]}),
        json!({"name": "Field weld", "workflow_type": "discrete", "milestones": [
            {"key": "fit_up", "name": "Fit-up", "weight": 30}, {"key": "weld", "name": "Weld", "weight": 50},
            {"key": "nde", "name": "NDE", "weight": 15}, {"key": "pwht", "name": "PWHT", "weight": 5}]}),
        json!({"name": "Support", "workflow_type": "discrete", "milestones": [
            {"key": "fabricate", "name": "Fabricate", "weight": 40}, {"key": "install", "name": "Install", "weight": 60}]}),
        json!({"name": "Pipe footage", "workflow_type": "quantity", "milestones": [
            {"key": "install", "name": "Install", "weight": 70}, {"key": "test", "name": "Test", "weight": 30}]}),
    ]
}

/// A generated project, as the benchmark addresses it.
pub struct Project {
    pub id: String,
    pub components: usize,
    /// Component ids and kinds, per drawing, in drawing order.
    pub drawings: Vec<Vec<(String, Kind)>>,
    /// How long the import of the component list took.
    pub import_time: Duration,
}

impl Project {
    /// Every component of one kind, in drawing order.
    pub fn of_kind(&self, kind: Kind) -> Vec<&str> {
        self.drawings
            .iter()
            .flatten()
            .filter(|(_, k)| *k == kind)
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// The component list as a field CSV: `drawings × per_drawing` rows.
fn component_csv(drawings: usize, per_drawing: usize) -> Vec<u8> {
    let mut csv = String::with_capacity(drawings * per_drawing * 64);
    csv.push_str("DWG NO,TAG,TYPE,TEMPLATE,QTY,UNIT,BUDGET HOURS,AREA,SYSTEM,TEST PKG\n");
    for d in 0..drawings {
        let dwg = format!("P-{d:05}-ISO");
        let (area, system, pkg) = (
            format!("U{:02}", d % 12),
            format!("SYS-{:02}", d % 40),
            format!("TP-{:04}", d / 20),
        );
        for i in 0..per_drawing {
            let n = d * per_drawing + i;
            let (tag, kind, template, qty, unit, hours) = match Kind::at(i) {
                Kind::Spool => (format!("SP-{n:07}"), "spool", "Spool", String::new(), "", 12.0),
                Kind::Weld => (format!("FW-{n:07}"), "weld", "Field weld", String::new(), "", 4.5),
                Kind::Support => (format!("PS-{n:07}"), "support", "Support", String::new(), "", 2.0),
                Kind::Pipe => (
                    format!("PIPE-{n:07}"),
                    "pipe",
                    "Pipe footage",
                    format!("{}", 6 + n % 115),
                    "m",
                    8.0,
                ),
            };
            csv.push_str(&format!(
                "{dwg},{tag},{kind},{template},{qty},{unit},{hours},{area},{system},{pkg}\n"
            ));
        }
    }
    csv.into_bytes()
}

/// Waits for a job, however long a large one takes.
pub fn wait_job(c: &Client, id: &str, limit: Duration) -> anyhow::Result<Value> {
    let start = Instant::now();
    loop {
        let (status, job) = c.call("GET", &format!("/v1/jobs/{id}"), None);
        ensure!(status == 200, "GET job: {status} {job}");
        match job["state"].as_str() {
            Some("completed") => return Ok(job),
            Some("failed" | "interrupted") => bail!("job {id} ended {}: {}", job["state"], job["message"]),
            _ => {}
        }
        ensure!(
            start.elapsed() < limit,
            "job {id} still {} after {limit:?}",
            job["state"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A 2xx body, or an error naming the step.
pub fn ok(step: &str, (status, body): (u16, Value)) -> anyhow::Result<Value> {
    ensure!((200..300).contains(&status), "{step}: {status} {body}");
    Ok(body)
}

/// Builds the project on the daemon behind `c`.
pub fn generate(c: &Client, components: usize, per_drawing: usize, seed: u64) -> anyhow::Result<Project> {
    let drawings = components.div_ceil(per_drawing);
    let project = ok(
        "create project",
        c.call(
            "POST",
            "/v1/projects",
            Some(&json!({"name": "Bench LNG Train", "code": "BENCH"})),
        ),
    )?["id"]
        .as_str()
        .context("project id")?
        .to_owned();
    for t in templates() {
        ok(
            "create template",
            c.call("POST", &format!("/v1/projects/{project}/templates"), Some(&t)),
        )?;
    }
    let csv = component_csv(drawings, per_drawing);
    let start = Instant::now();
    let accepted = ok(
        "import",
        c.upload(&format!("/v1/projects/{project}/imports"), &csv, "text/csv"),
    )?;
    let job = wait_job(
        c,
        accepted["job_id"].as_str().context("job id")?,
        Duration::from_secs(3600),
    )?;
    let import_time = start.elapsed();
    ensure!(
        job["result"]["rejected"] == 0,
        "import rejected rows: {}",
        job["message"]
    );

    // The ids, from the streamed component list.
    let (status, _, list) = c.download(&format!("/v1/projects/{project}/components.csv"));
    ensure!(status == 200, "components.csv: {status}");
    let mut rdr = csv::Reader::from_reader(&list[..]);
    let headers = rdr.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .context(format!("{name} column"))
    };
    let (id_col, dwg_col, tag_col) = (col("id")?, col("drawing")?, col("tag")?);
    let mut by_drawing: HashMap<String, Vec<(String, Kind)>> = HashMap::new();
    for record in rdr.records() {
        let r = record?;
        let kind = Kind::of_tag(&r[tag_col]).context("tag")?;
        by_drawing
            .entry(r[dwg_col].to_owned())
            .or_default()
            .push((r[id_col].to_owned(), kind));
    }
    let mut numbers: Vec<String> = by_drawing.keys().cloned().collect();
    numbers.sort();
    let drawings: Vec<Vec<(String, Kind)>> = numbers
        .into_iter()
        .map(|n| by_drawing.remove(&n).unwrap_or_default())
        .collect();
    let count: usize = drawings.iter().map(Vec::len).sum();
    let expected = components.div_ceil(per_drawing) * per_drawing;
    ensure!(
        count == expected,
        "the project lists {count} components, not {expected}"
    );

    // A mix of progress: most spools received, many erected, welds fitted
    // and welded, supports fabricated, pipe partly installed.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut updates = Vec::new();
    for (id, kind) in drawings.iter().flatten() {
        let roll: f64 = rng.random();
        let mut done = |key: &str, p: f64| {
            if roll < p {
                updates.push(json!({"component_id": id, "milestone": key, "completed": true}));
            }
        };
        match kind {
            Kind::Spool => {
                done("receive", 0.8);
                done("erect", 0.5);
                done("connect", 0.3);
            }
            Kind::Weld => {
                done("fit_up", 0.6);
                done("weld", 0.4);
            }
            Kind::Support => done("fabricate", 0.7),
            Kind::Pipe => {
                if roll < 0.5 {
                    updates.push(json!({"component_id": id, "milestone": "install", "quantity": 3}));
                }
            }
        }
    }
    for chunk in updates.chunks(10_000) {
        let out = ok(
            "progress mix",
            c.call(
                "POST",
                &format!("/v1/projects/{project}/milestones:bulk"),
                Some(&json!({"updates": chunk, "options": {"reason": "benchmark progress mix"}})),
            ),
        )?;
        ensure!(out["failed"] == 0, "progress mix failed: {out}");
    }
    Ok(Project {
        id: project,
        components: count,
        drawings,
        import_time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_has_the_mix_and_one_row_per_component() {
        let csv = String::from_utf8(component_csv(3, 50)).unwrap();
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        assert_eq!(rows.len(), 150);
        let kinds: Vec<Kind> = rows
            .iter()
            .map(|r| Kind::of_tag(r.split(',').nth(1).unwrap()).unwrap())
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Weld).count(), 60);
        assert_eq!(kinds.iter().filter(|k| **k == Kind::Pipe).count(), 15);
        assert!(rows[0].starts_with("P-00000-ISO,SP-0000000,spool,Spool,,"));
    }
}
