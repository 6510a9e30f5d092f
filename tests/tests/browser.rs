//! The field app in a real browser (headless Debian Chromium) against the
//! real daemon: signing in through the printed one-time URL, a second use
//! of it refused, the projects screen at phone and laptop sizes, creating
//! a project, signing out. Screenshots of each screen are saved under
//! `target/tmp/screenshots/` for a person to look at.

use sitesync_tests::Daemon;
use sitesync_tests::browser::Browser;

/// Laptop and phone (the narrowest the app supports) sizes.
const LAPTOP: (u32, u32) = (1280, 800);
const PHONE: (u32, u32) = (360, 740);

#[test]
fn a_crew_member_signs_in_once_sees_the_projects_and_signs_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("d"), &["--demo"]);
    let login = d.login_url.clone().expect("the daemon prints a sign-in URL");

    let mut b = Browser::start();
    b.goto(&login);
    b.wait_for(
        "the demo project listed",
        "document.querySelector('.project-name')?.textContent === 'Demo: North Pipe Rack'",
    );
    assert_eq!(
        b.eval("location.hash"),
        "",
        "the code is gone from the address bar"
    );
    let text = b.text();
    assert!(text.contains("150 components"), "{text}");
    b.screenshot("projects-laptop");
    b.viewport(PHONE.0, PHONE.1, true);
    // Nothing wider than the phone's screen: no sideways scrolling.
    let wide = b.eval("document.documentElement.scrollWidth");
    assert!(
        wide.as_u64().unwrap() <= u64::from(PHONE.0),
        "the page is {wide} px wide"
    );
    b.screenshot("projects-phone");
    b.viewport(LAPTOP.0, LAPTOP.1, false);

    // A project made from the form appears in the list.
    b.type_into("#new-name", "Boiler house");
    b.click("form[aria-labelledby='new-project'] button[type=submit]");
    b.wait_for(
        "the new project listed",
        "[...document.querySelectorAll('.project-name')].some(e => e.textContent === 'Boiler house')",
    );
    // The API refuses what the form lets through, and the page says why.
    b.eval("document.querySelector('#new-name').value = ''");
    b.type_into("#new-name", "   ");
    b.click("form[aria-labelledby='new-project'] button[type=submit]");
    let said = b.wait_for(
        "the refusal shown by the form",
        "(() => { const m = document.querySelector('.field-message'); return m && !m.hidden && m.textContent; })()",
    );
    assert!(said.as_str().unwrap().contains("must not be empty"), "{said}");

    // The same link in another browser is refused, saying what to do.
    let mut other = Browser::start();
    other.goto(&login);
    other.wait_for(
        "the sign-in page",
        "document.querySelector('h1')?.textContent === 'Sign in to sitesync'",
    );
    let text = other.text();
    assert!(text.contains("already used"), "{text}");
    assert!(text.contains("sitesync-daemon open"), "{text}");
    other.screenshot("sign-in-refused");

    // Signing out ends the session: a reload stays signed out.
    b.click("#sign-out");
    b.wait_for(
        "the sign-in page",
        "document.querySelector('h1')?.textContent === 'Sign in to sitesync'",
    );
    b.goto(&format!("http://{}/", d.addr));
    b.wait_for(
        "the sign-in page",
        "document.querySelector('h1')?.textContent === 'Sign in to sitesync'",
    );
}
