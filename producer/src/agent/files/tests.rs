//! Tests of the atomic writer.

use std::os::unix::fs::PermissionsExt;

use super::*;

fn material(name: &str, version: &str) -> Material {
    Material {
        name: CertName::parse(name).expect("name"),
        version: version.to_string(),
        serial: format!("serial-{version}"),
        cert_pem: format!("-----BEGIN CERTIFICATE-----\n{version}\n-----END CERTIFICATE-----"),
        chain_pem: "-----BEGIN CERTIFICATE-----\nchain\n-----END CERTIFICATE-----\n".into(),
        key_pem: Some(Secret::new(format!(
            "-----BEGIN PRIVATE KEY-----\n{version}\n-----END PRIVATE KEY-----\n"
        ))),
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn versions(dir: &CertDir, name: &CertName) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir.state_dir(name))
        .expect("state dir")
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[test]
fn a_key_the_operator_holds_is_not_written_and_the_version_counts_as_complete() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("open");
    let mut m = material("own.example.com", "v1");
    m.key_pem = None;
    let link = dir.write(&m).expect("write");
    assert!(link.join(CERT_FILE).is_file());
    assert!(link.join(FULLCHAIN_FILE).is_file());
    assert!(!link.join(KEY_FILE).exists(), "no key file");
    let on_disk = dir.current(&m.name).expect("current").expect("on disk");
    assert_eq!(on_disk.version, "v1");
    assert!(on_disk.no_key);
    // A version with a key is incomplete without its key file.
    let m2 = material("own.example.com", "v2");
    let link = dir.write(&m2).expect("write v2");
    fs::remove_file(link.join(KEY_FILE)).expect("rm key");
    assert_eq!(dir.current(&m2.name).expect("current"), None);
}

#[test]
fn writes_four_files_with_modes_behind_a_symlink() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("open");
    let m = material("www.example.com", "v1");
    let link = dir.write(&m).expect("write");
    assert_eq!(link, dir.root().join("www.example.com"));
    assert!(
        fs::symlink_metadata(&link)
            .expect("lstat")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&link).expect("readlink"),
        Path::new(".certfleet/www.example.com/v1")
    );
    for f in PEM_FILES {
        assert!(link.join(f).is_file(), "{f} missing");
    }
    assert_eq!(mode(&link.join(KEY_FILE)), 0o600);
    let fullchain = fs::read_to_string(link.join(FULLCHAIN_FILE)).expect("fullchain");
    assert_eq!(
        fullchain,
        "-----BEGIN CERTIFICATE-----\nv1\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nchain\n-----END CERTIFICATE-----\n"
    );
    let state = dir.current(&m.name).expect("current").expect("state");
    assert_eq!(
        (state.version.as_str(), state.serial.as_str()),
        ("v1", "serial-v1")
    );
}

#[test]
fn swap_keeps_previous_and_deletes_older() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("open");
    let name = CertName::parse("a.example.com").expect("name");
    dir.write(&material("a.example.com", "v1")).expect("v1");
    // A reader opens the key of v1 before the switch.
    let mut reader = File::open(dir.link(&name).join(KEY_FILE)).expect("open v1 key");
    dir.write(&material("a.example.com", "v2")).expect("v2");
    assert_eq!(versions(&dir, &name), ["v1", "v2"]);
    let mut old = String::new();
    io::Read::read_to_string(&mut reader, &mut old).expect("read v1 key");
    assert!(old.contains("v1"));
    let key = fs::read_to_string(dir.link(&name).join(KEY_FILE)).expect("key");
    assert!(key.contains("v2"));
    dir.write(&material("a.example.com", "v3")).expect("v3");
    assert_eq!(versions(&dir, &name), ["v2", "v3"]);
    assert_eq!(
        dir.current(&name).expect("current").expect("state").version,
        "v3"
    );
    // No leftovers besides the versions.
    assert!(!dir.state_dir(&name).join(LINK_TMP).exists());
}

#[test]
fn a_reader_never_pairs_a_certificate_with_another_version_s_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("open");
    let name = CertName::parse("a.example.com").expect("name");
    dir.write(&material("a.example.com", "v0")).expect("v0");
    let link = dir.link(&name);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Resolve once, then read both files from that version.
                let Ok(version_dir) = fs::canonicalize(&link) else {
                    continue;
                };
                let (Ok(cert), Ok(key)) = (
                    fs::read_to_string(version_dir.join(FULLCHAIN_FILE)),
                    fs::read_to_string(version_dir.join(KEY_FILE)),
                ) else {
                    continue; // pruned two switches later: resolve again
                };
                let version = |pem: &str| pem.lines().nth(1).map(str::to_string);
                assert_eq!(
                    version(&cert),
                    version(&key),
                    "mixed pair in {}",
                    version_dir.display()
                );
                reads += 1;
            }
            reads
        })
    };
    for i in 1..=100 {
        dir.write(&material("a.example.com", &format!("v{i}")))
            .expect("write");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.join().expect("reader");
    assert!(reads > 0);
    assert_eq!(versions(&dir, &name), ["v100", "v99"]);
}

#[test]
fn repairing_the_current_version_uses_a_new_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("open");
    let name = CertName::parse("a.example.com").expect("name");
    dir.write(&material("a.example.com", "v1")).expect("v1");
    fs::remove_file(dir.link(&name).join(CHAIN_FILE)).expect("rm");
    assert_eq!(
        dir.current(&name).expect("current"),
        None,
        "incomplete counts as absent"
    );
    dir.write(&material("a.example.com", "v1"))
        .expect("v1 again");
    let state = dir.current(&name).expect("current").expect("state");
    assert_eq!(state.version, "v1");
    let vs = versions(&dir, &name);
    assert_eq!(vs.len(), 2);
    assert!(vs[0] == "v1" && vs[1].starts_with("v1."), "{vs:?}");
}

#[test]
fn refuses_a_real_directory_and_leaves_it_alone() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("open");
    let user = tmp.path().join("www.example.com");
    fs::create_dir(&user).expect("mkdir");
    fs::write(user.join("fullchain.pem"), "theirs").expect("write");
    let err = dir
        .write(&material("www.example.com", "v1"))
        .expect_err("must refuse");
    assert!(matches!(err, WatchError::Occupied { .. }), "{err}");
    assert!(err.to_string().contains("www.example.com"), "{err}");
    assert_eq!(
        fs::read_to_string(user.join("fullchain.pem")).expect("read"),
        "theirs"
    );
    assert!(matches!(
        dir.current(&CertName::parse("www.example.com").expect("name")),
        Err(WatchError::Occupied { .. })
    ));
}

#[test]
fn cleans_up_after_a_crash() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CertDir::open(tmp.path()).expect("open");
    let name = CertName::parse("a.example.com").expect("name");
    fs::create_dir_all(dir.state_dir(&name).join(".partial-v0-1-2")).expect("leftover");
    std::os::unix::fs::symlink("nowhere", dir.state_dir(&name).join(LINK_TMP)).expect("tmp link");
    fs::write(dir.state_dir(&name).join("hook-pending"), "{}").expect("marker");
    dir.write(&material("a.example.com", "v1")).expect("v1");
    assert_eq!(versions(&dir, &name), ["v1"]);
    assert!(
        dir.state_dir(&name).join("hook-pending").exists(),
        "files are not pruned"
    );
    assert_eq!(dir.state_names().expect("names"), [name]);
}

#[test]
fn dir_is_created_or_must_be_a_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let made = CertDir::open(&tmp.path().join("nope/deeper")).expect("created");
    assert!(made.root().is_dir());
    let file = tmp.path().join("file");
    fs::write(&file, "x").expect("write");
    let not_dir = CertDir::open(&file).expect_err("file");
    assert!(not_dir.is_usage(), "{not_dir}");
    assert!(not_dir.to_string().contains("not a directory"), "{not_dir}");
    let below = CertDir::open(&file.join("below")).expect_err("below a file");
    assert!(
        matches!(below, WatchError::Dir { .. }) && below.is_usage(),
        "{below}"
    );
}

#[test]
fn version_ids_must_be_plain_names() {
    assert!(check_version("20261125T083000Z-3f1a9c0b2e7d4a5b").is_ok());
    for bad in ["", "..", ".hidden", "a/b", "a b", "../../etc"] {
        assert!(check_version(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn replace_file_is_atomic_and_keeps_mode() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("marker");
    replace_file(&path, b"one", 0o600).expect("one");
    replace_file(&path, b"two", 0o600).expect("two");
    assert_eq!(fs::read_to_string(&path).expect("read"), "two");
    assert_eq!(mode(&path), 0o600);
    assert_eq!(fs::read_dir(tmp.path()).expect("ls").count(), 1);
}
