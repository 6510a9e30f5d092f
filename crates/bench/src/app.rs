//! The field app in a real headless browser (Debian's `chromium`, driven
//! over the DevTools protocol by the tests' harness) against daemon A and
//! its large project: how soon a project's first screen is usable, how soon
//! a tapped milestone shows its new completion, how long a scanned tag
//! takes to open its component, and how large the app's own assets are.
//!
//! Times are read inside the page: the app marks `sitesync:screen-ready`
//! when a screen is shown and usable (its data loaded and drawn), and the
//! mark's time counts from the navigation's start; a tap is timed from the
//! click to the frame after the new state is in the page.

use std::io::Write as _;

use anyhow::{Context, ensure};
use serde_json::json;
use sitesync_tests::Client;
use sitesync_tests::browser::Browser;

use crate::project::{Kind, Project};
use crate::report::{Figure, Stat};
use crate::scenarios::Sizes;

/// The app's assets as the page names them (`/`, then each `/app/...` it
/// links), each with its bytes and its gzip-compressed size.
fn assets(client: &Client) -> anyhow::Result<Vec<(String, usize, usize)>> {
    let (status, _, index) = client.download("/");
    ensure!(status == 200, "GET / answered {status}");
    let html = String::from_utf8(index.clone()).context("the page is not UTF-8")?;
    let mut paths = vec!["/".to_owned()];
    for part in html.split('"').skip(1).step_by(2) {
        if part.starts_with("/app/") && !paths.iter().any(|p| p == part) {
            paths.push(part.to_owned());
        }
    }
    // Modules the page does not name: every import of every module.
    let mut i = 1;
    while i < paths.len() {
        let (status, _, body) = client.download(&paths[i]);
        ensure!(status == 200, "GET {} answered {status}", paths[i]);
        if paths[i].ends_with(".js") {
            let text = String::from_utf8_lossy(&body);
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                if let Some(name) = line.split('"').nth(1).and_then(|n| n.strip_prefix("./")) {
                    let path = format!("/app/{name}");
                    if !paths.contains(&path) {
                        paths.push(path);
                    }
                }
            }
        }
        i += 1;
    }
    paths
        .into_iter()
        .map(|path| {
            let (_, _, body) = client.download(&path);
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&body)?;
            let packed = gz.finish()?.len();
            Ok((path, body.len(), packed))
        })
        .collect()
}

/// Milliseconds from the navigation's start to the screen at `url` being
/// usable (the mark it set; a hash change keeps the document, and the
/// marks of screens shown before).
fn screen_ready(b: &mut Browser, url: &str) -> f64 {
    let hash = json!(url.find('#').map_or("", |i| &url[i..]));
    let mark =
        format!("performance.getEntriesByName('sitesync:screen-ready').find(m => m.detail === {hash})");
    b.wait_for("the screen to be ready", &format!("{mark} !== undefined"));
    b.eval(&format!("{mark}.startTime")).as_f64().unwrap_or(f64::NAN)
}

/// Milliseconds until the screen at `url` is usable, `times` times, each
/// in a new page (from a blank one, as a link opened afresh).
fn opened_afresh(b: &mut Browser, url: &str, times: usize) -> Vec<f64> {
    (0..times)
        .map(|_| {
            b.goto("about:blank");
            b.goto(url);
            screen_ready(b, url)
        })
        .collect()
}

pub fn field_app(client: &Client, project: &Project, sizes: &Sizes) -> anyhow::Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let files = assets(client)?;
    let total: usize = files.iter().map(|f| f.2).sum();
    let raw: usize = files.iter().map(|f| f.1).sum();
    figures.push(
        Figure::new(
            "field app",
            "the app's own assets, gzip",
            "KB",
            vec![total as f64 / 1024.0],
        )
        .target(Stat::Value, 300.0)
        .note(format!(
            "{} files (the page and every module, style and icon it loads), {:.0} KB uncompressed",
            files.len(),
            raw as f64 / 1024.0
        )),
    );

    let (status, link) = client.call("POST", "/v1/session/links", None);
    ensure!(status == 201, "a sign-in link: {status} {link}");
    let login = link["url"].as_str().context("the link's url")?.to_owned();
    let base = login.split('#').next().unwrap_or_default().to_owned();
    let mut b = Browser::start();
    b.goto(&login);
    b.wait_for("the projects", "document.querySelector('.project-name') !== null");

    // The first screen of the project, opened afresh each time.
    let dashboard = format!("{base}#/projects/{}", project.id);
    let first = opened_afresh(&mut b, &dashboard, sizes.app_loads);
    figures.push(
        Figure::new(
            "field app",
            "first screen: a project's dashboard, usable",
            "ms",
            first,
        )
        .target(Stat::P99, 1000.0)
        .note(format!(
            "from opening the URL to completion, rollups, badge and activity drawn; {} components",
            project.components
        )),
    );

    // The project's other screens, each opened afresh (information).
    for (path, name) in [
        ("components", "the components list"),
        ("operations", "the operations list"),
        ("files", "import & export"),
    ] {
        let samples = opened_afresh(&mut b, &format!("{dashboard}/{path}"), sizes.app_loads);
        figures.push(
            Figure::new(
                "field app",
                &format!("first screen: {name}, usable"),
                "ms",
                samples,
            )
            .note(format!(
                "from opening the URL; {} components (information)",
                project.components
            )),
        );
    }

    // A tag typed (as a scanner does) then Enter, to its component's page.
    let spools = project.of_kind(Kind::Spool);
    let mut scans = Vec::new();
    let mut tags = Vec::new();
    for id in spools
        .iter()
        .step_by((spools.len() / sizes.app_loads.max(1)).max(1))
        .take(sizes.app_loads)
    {
        let (_, c) = client.call(
            "GET",
            &format!("/v1/projects/{}/components/{id}", project.id),
            None,
        );
        tags.push((
            c["id"].clone(),
            c["tag"].as_str().unwrap_or_default().to_owned(),
            c,
        ));
    }
    for (id, tag, _) in &tags {
        // Within the page, as a person moves from screen to screen (the
        // dashboard's mark is found by its address).
        b.goto(&dashboard);
        screen_ready(&mut b, &dashboard);
        b.eval("performance.clearMarks(); window.scanStarted = performance.now(); true");
        b.type_into("#find", tag);
        b.press_enter();
        b.wait_for(
            "the component's page",
            &format!("document.querySelector('h1')?.textContent === {}", json!(tag)),
        );
        let page = format!(
            "#/projects/{}/components/{}",
            project.id,
            id.as_str().unwrap_or_default()
        );
        let ms = screen_ready(&mut b, &page) - b.eval("window.scanStarted").as_f64().unwrap_or(f64::NAN);
        scans.push(ms);
    }
    figures.push(
        Figure::new("field app", "scan a tag → its component's page", "ms", scans).note(format!(
            "typed into Find and Enter, on the dashboard of {} components (information)",
            project.components
        )),
    );

    // Taps on a discrete milestone, back and forth.
    let (_, _, spool) = tags.first().context("a spool to record on")?;
    let key = spool["milestones"][0]["key"]
        .as_str()
        .context("a milestone")?
        .to_owned();
    let page = format!(
        "{base}#/projects/{}/components/{}",
        project.id,
        spool["id"].as_str().unwrap_or_default()
    );
    b.goto(&page);
    screen_ready(&mut b, &page);
    let sel = json!(format!("li[data-key='{key}'] button"));
    let tap = format!(
        "(async () => {{
            const b = document.querySelector({sel});
            const was = b.getAttribute('aria-pressed');
            const t0 = performance.now();
            b.click();
            // Seen the moment the page changes (a frame's polling would
            // add up to a frame to every sample), then the frame that
            // paints it.
            await new Promise((resolve) => {{
                const done = () => {{
                    const n = document.querySelector({sel});
                    return n && n.getAttribute('aria-pressed') !== was && !n.disabled;
                }};
                const seen = new MutationObserver(() => {{
                    if (done()) {{ seen.disconnect(); resolve(); }}
                }});
                seen.observe(document.body, {{ subtree: true, childList: true, attributes: true }});
            }});
            await new Promise((r) => requestAnimationFrame(() => r()));
            return performance.now() - t0;
        }})()"
    );
    let mut taps = Vec::new();
    for _ in 0..sizes.app_taps {
        taps.push(b.eval(&tap).as_f64().unwrap_or(f64::NAN));
    }
    figures.push(
        Figure::new(
            "field app",
            "record a milestone: tap → new completion shown",
            "ms",
            taps,
        )
        .target(Stat::P99, 100.0)
        .note("a discrete milestone toggled, click to the frame after the answer is drawn"),
    );
    Ok(figures)
}
