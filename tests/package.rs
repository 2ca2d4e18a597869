//! The install path: the Debian package built by packaging/deb/build.sh from the test
//! binary, unpacked into a fresh root with dpkg-deb, and the installed `logwarden check` run
//! on the installed config and rules.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: exit {:?}\n{}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_debian_package_installs_a_config_that_checks_clean() {
    let Some(dpkg_deb) = peer("dpkg-deb", "dpkg") else {
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let work = tempfile::tempdir().unwrap();
    let deb = run(Command::new(repo.join("packaging/deb/build.sh"))
        .arg(work.path().join("out"))
        .env("LOGWARDEN_BIN", bin()));
    let deb = Path::new(deb.trim());
    assert!(deb.is_file(), "{}", deb.display());

    // What dpkg will treat as the operator's files, and the scripts it runs.
    let info = work.path().join("DEBIAN");
    run(Command::new(&dpkg_deb).arg("-e").arg(deb).arg(&info));
    let conffiles = std::fs::read_to_string(info.join("conffiles")).unwrap();
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/logwarden/logwarden.yaml"),
        "{conffiles}"
    );
    assert!(
        conffiles
            .lines()
            .any(|l| l == "/etc/logwarden/rules/ssh.yaml"),
        "{conffiles}"
    );
    let postinst = std::fs::read_to_string(info.join("postinst")).unwrap();
    assert!(
        postinst.contains("logwarden token create admin --role admin"),
        "{postinst}"
    );
    assert!(
        postinst.contains("systemctl enable logwarden.service"),
        "{postinst}"
    );

    let root = work.path().join("root");
    run(Command::new(&dpkg_deb).arg("-x").arg(deb).arg(&root));
    for file in [
        "usr/bin/logwarden",
        "lib/systemd/system/logwarden.service",
        "usr/share/man/man1/logwarden.1.gz",
        "usr/share/bash-completion/completions/logwarden",
        "usr/share/zsh/vendor-completions/_logwarden",
        "usr/share/fish/vendor_completions.d/logwarden.fish",
        "usr/share/doc/logwarden/copyright",
    ] {
        let meta = std::fs::metadata(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(meta.len() > 0, "{file} is empty");
    }

    // The installed binary passes the installed config and rule packs (warnings about this
    // host's log files and the service's credential are allowed: they are host facts).
    let installed = root.join("usr/bin/logwarden");
    let out = Command::new(&installed)
        .args(["check", "--config"])
        .arg(root.join("etc/logwarden/logwarden.yaml"))
        .env_remove("LOGWARDEN_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ok: ") && !last.starts_with("ok: 0 "),
        "{stdout}"
    );

    // What the postinst does on first install: a token only root can read, kept on upgrade.
    let token = root.join("etc/logwarden/tokens/admin");
    let made = |path: &Path| {
        Command::new(&installed)
            .args(["token", "create", "admin", "--role", "admin", "--file"])
            .arg(path)
            .output()
            .unwrap()
    };
    let first = made(&token);
    assert!(first.status.success(), "{first:?}");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let secret = std::fs::read_to_string(&token).unwrap();
    assert_eq!(secret.trim().len(), 64, "256 random bits, hex");
    assert!(
        !String::from_utf8_lossy(&first.stdout).contains(secret.trim()),
        "never printed"
    );
    let again = made(&token);
    assert_eq!(again.status.code(), Some(1), "an existing token is kept");
    assert_eq!(std::fs::read_to_string(&token).unwrap(), secret);
}
