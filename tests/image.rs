//! The image builds without a container engine and its binary runs.
//!
//! `scripts/build-image.sh` packages the binary this test was built with (a
//! dynamic glibc one, so the shared-library path is exercised; `make image`
//! packages the static release binary the same way), then the OCI archive is
//! unpacked with skopeo and umoci and `peregrine --version` runs from its root
//! filesystem under chroot, as user 65532.
//!
//! Needs buildah, skopeo and umoci (`scripts/install-image-tools.sh`, which CI
//! runs) and root for chroot; without them the test says so and passes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Why the image cannot be built and run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    for tool in ["buildah", "skopeo", "umoci", "chroot"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed: run scripts/install-image-tools.sh as root"
            ));
        }
    }
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("unpacking and chroot need root".to_string());
    }
    None
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn image_built_without_a_daemon_runs_peregrine_as_non_root() {
    if let Some(why) = missing_prerequisite() {
        eprintln!("SKIPPED: the image test needs buildah, skopeo, umoci and root: {why}");
        return;
    }
    let work = repo().join("target/image/test");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("create target/image/test");
    let archive = work.join("peregrine.tar");
    run(Command::new(repo().join("scripts/build-image.sh"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_peregrine"))
        .arg("--out")
        .arg(&archive)
        .args(["--tag", "peregrine:test"])
        .env("PEREGRINE_IMAGE_STORAGE", work.join("storage")));
    assert!(archive.is_file(), "no OCI archive at {}", archive.display());

    let layout = work.join("oci");
    run(Command::new("skopeo").args([
        "copy",
        "-q",
        &format!("oci-archive:{}", archive.display()),
        &format!("oci:{}:peregrine", layout.display()),
    ]));
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:peregrine", layout.display()))
        .arg(&bundle));

    // The runtime config says: non-root, entrypoint /peregrine, default `run`.
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bundle.join("config.json")).expect("bundle has config.json"),
    )
    .expect("config.json is JSON");
    assert_eq!(config["process"]["user"]["uid"], 65532, "{config:#}");
    assert_eq!(config["process"]["user"]["gid"], 65532, "{config:#}");
    assert_eq!(
        config["process"]["args"],
        serde_json::json!(["/peregrine", "run"]),
        "{config:#}"
    );

    let rootfs = bundle.join("rootfs");
    let version = run(Command::new("chroot")
        .arg("--userspec=65532:65532")
        .arg(&rootfs)
        .args(["/peregrine", "--version"]));
    assert_eq!(
        version.trim(),
        format!("peregrine {}", env!("CARGO_PKG_VERSION"))
    );
    // Nothing but the binary, its libraries, CA certificates and passwd entries.
    let mut top: Vec<String> = std::fs::read_dir(&rootfs)
        .expect("rootfs")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    for entry in &top {
        assert!(
            ["etc", "lib", "lib64", "usr", "peregrine", "tmp"].contains(&entry.as_str()),
            "unexpected /{entry} in the image: {top:?}"
        );
    }
    assert!(
        !Path::new(&rootfs.join("bin/sh")).exists(),
        "the image has a shell"
    );
    let _ = std::fs::remove_dir_all(&work);
}
