//! The daemon's command line as a newcomer meets it.

use std::process::Command;

use sitesync_tests::binary;

#[test]
fn help_answers_the_first_questions() {
    let out = Command::new(binary("sitesync-daemon"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--data-dir",
        "--listen",
        "--user",
        "--device-name",
        "--demo",
        "--allow-origin",
        "SITESYNC_DATA_DIR",
        "api token",
    ] {
        assert!(
            help.to_lowercase().contains(&needle.to_lowercase()),
            "--help does not mention {needle}:\n{help}"
        );
    }
}

#[test]
fn a_non_loopback_listen_address_is_refused_without_allow_remote() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("sitesync-daemon"))
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-remote"), "{err}");
    assert!(
        !dir.path().join("api-token").exists(),
        "nothing is created when refusing"
    );
}

#[test]
fn settings_come_from_the_environment_too() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary("sitesync-daemon"))
        .env("SITESYNC_DATA_DIR", dir.path())
        .env("SITESYNC_LISTEN", "10.1.2.3:7700")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("10.1.2.3:7700"));
}

#[test]
fn a_document_cache_of_zero_is_refused_by_name() {
    for (binary_name, command) in [("sitesync-daemon", &[][..]), ("sitesync-relay", &["serve"][..])] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(binary(binary_name))
            .args(command)
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--listen", "127.0.0.1:0", "--max-cached-documents", "0"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{binary_name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("invalid value '0' for '--max-cached-documents"),
            "{binary_name}: {err}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "{binary_name} created nothing when refusing"
        );
    }
}
