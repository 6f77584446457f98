use super::create::{create, Created};
use super::extract::{extract, list};
use super::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

fn root() -> bool {
    rustix::process::geteuid().is_root()
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("haul-tar-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_dir(p: &Path) -> std::os::fd::OwnedFd {
    rustix::fs::open(
        p,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .unwrap()
}

fn set_mtime(p: &Path, secs: i64) {
    let t = rustix::fs::Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// A tree with every kind haul's tar handles, owners and modes a container's /dev has.
fn populate(d: &Path) {
    use std::os::unix::fs::{chown, lchown, symlink};
    std::fs::create_dir(d.join("pts")).unwrap();
    std::fs::create_dir_all(d.join("a/b/c")).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(d.join("a/b/big"), &big).unwrap();
    std::fs::write(d.join("empty"), b"").unwrap();
    std::fs::write(d.join("suid"), b"#!/bin/sh\n").unwrap();
    chown(d.join("suid"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(d.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    symlink("/proc/self/fd", d.join("fd")).unwrap();
    lchown(d.join("fd"), Some(7), Some(8)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        d.join("null").as_path(),
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    std::fs::set_permissions(d.join("null"), std::fs::Permissions::from_mode(0o666)).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        d.join("fifo").as_path(),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    std::fs::set_permissions(d.join("a"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    for (i, p) in [
        "a/b/big", "empty", "suid", "null", "fifo", "fd", "a/b/c", "a/b", "a", "pts", "",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&d.join(p), 1_700_000_000 + i as i64 * 1000);
    }
}

/// (relative path, kind, mode, uid, gid, mtime, rdev, size, content or link) of every entry.
fn snapshot(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                format!("{:x}", {
                    let mut c = gzip::Crc32::new();
                    c.update(&std::fs::read(&p).unwrap());
                    c.value()
                })
            } else {
                String::new()
            };
            out.push(format!(
                "{rel} {:o} {}:{} t{} rdev{} size{} {what}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.rdev(),
                if m.is_dir() { 0 } else { m.size() }
            ));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let m = std::fs::metadata(d).unwrap();
    out.push(format!(
        ". {:o} {}:{} t{}",
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime()
    ));
    walk(d, d, &mut out);
    out
}

fn archive_of(d: &Path) -> Vec<u8> {
    let fd = open_dir(d);
    let mut v = Vec::new();
    match create(fd.as_fd(), &mut v).unwrap() {
        Created::Done { .. } => v,
        Created::Unsupported(u) => panic!("unsupported: {}", u.0),
    }
}

#[test]
fn a_tree_comes_back_identical_through_haul_and_through_gnu_tar() {
    if !root() {
        eprintln!("skipped: device nodes and owners need root");
        return;
    }
    let t = Tmp::new("roundtrip");
    let src = t.0.join("src");
    std::fs::create_dir(&src).unwrap();
    populate(&src);
    let want = snapshot(&src);
    let archive = archive_of(&src);

    // haul extracts it.
    let ours = t.0.join("ours");
    std::fs::create_dir(&ours).unwrap();
    let n = extract(&archive[..], open_dir(&ours).as_fd()).unwrap();
    assert_eq!(n as usize, want.len());
    assert_eq!(snapshot(&ours), want);

    // GNU tar extracts it as CRIU would run it.
    let gnu = t.0.join("gnu");
    std::fs::create_dir(&gnu).unwrap();
    let file = t.0.join("tmpfs.tar.gz");
    std::fs::write(&file, &archive).unwrap();
    let st = std::process::Command::new("tar")
        .args([
            "--extract",
            "--gzip",
            "--no-unquote",
            "--no-wildcards",
            "--directory",
        ])
        .arg(&gnu)
        .stdin(std::fs::File::open(&file).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(snapshot(&gnu), want);

    // The listing names entries as GNU tar does.
    let names: Vec<String> = list(&archive[..])
        .unwrap()
        .into_iter()
        .map(|h| h.path)
        .collect();
    assert_eq!(names[0], "./");
    assert!(names.contains(&"./a/b/big".to_string()));
    assert!(names.contains(&"./a/b/c/".to_string()));
}

#[test]
fn what_haul_cannot_archive_is_left_to_gnu_tar() {
    let t = Tmp::new("unsupported");
    let hard = t.0.join("hard");
    std::fs::create_dir(&hard).unwrap();
    std::fs::write(hard.join("one"), b"x").unwrap();
    std::fs::hard_link(hard.join("one"), hard.join("two")).unwrap();
    let sock = t.0.join("sock");
    std::fs::create_dir(&sock).unwrap();
    let _l = std::os::unix::net::UnixListener::bind(sock.join("s")).unwrap();
    let sparse = t.0.join("sparse");
    std::fs::create_dir(&sparse).unwrap();
    std::fs::File::create(sparse.join("hole"))
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let long = t.0.join("long");
    std::fs::create_dir(&long).unwrap();
    std::fs::write(long.join("n".repeat(150)), b"").unwrap();
    for (d, why) in [
        (&hard, "hard-linked"),
        (&sock, "Socket"),
        (&sparse, "sparse"),
        (&long, "too long"),
    ] {
        match create(open_dir(d).as_fd(), Vec::new()).unwrap() {
            Created::Unsupported(u) => assert!(u.0.contains(why), "{} for {why}", u.0),
            Created::Done { .. } => panic!("{} archived", d.display()),
        }
    }
}

#[test]
fn a_mount_point_is_archived_without_what_is_mounted_there() {
    if !root() {
        eprintln!("skipped: mounting needs root");
        return;
    }
    let t = Tmp::new("onefs");
    let sub = t.0.join("sub");
    std::fs::create_dir(&sub).unwrap();
    rustix::mount::mount(
        "none",
        &sub,
        "tmpfs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .unwrap();
    std::fs::write(sub.join("inner"), b"x").unwrap();
    std::fs::write(t.0.join("outer"), b"y").unwrap();
    let archive = {
        let mut v = Vec::new();
        let r = create(open_dir(&t.0).as_fd(), &mut v);
        rustix::mount::unmount(&sub, rustix::mount::UnmountFlags::DETACH).unwrap();
        match r.unwrap() {
            Created::Done { .. } => v,
            Created::Unsupported(u) => panic!("{}", u.0),
        }
    };
    let names: Vec<String> = list(&archive[..])
        .unwrap()
        .into_iter()
        .map(|h| h.path)
        .collect();
    assert!(names.contains(&"./sub/".to_string()), "{names:?}");
    assert!(names.contains(&"./outer".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("inner")), "{names:?}");
}

fn archive_from(headers: &[ustar::Header], content: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = gzip::StoredWriter::new(Vec::new()).unwrap();
    for h in headers {
        w.write_all(&h.encode().unwrap()).unwrap();
        if h.kind == ustar::Kind::File {
            w.write_all(content).unwrap();
            let pad = (512 - content.len() % 512) % 512;
            w.write_all(&vec![0; pad]).unwrap();
        }
    }
    w.write_all(&[0; 1024]).unwrap();
    w.finish().unwrap()
}

fn entry(path: &str, kind: ustar::Kind, link: &str, size: u64) -> ustar::Header {
    ustar::Header {
        path: path.into(),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        size,
        mtime: 1_700_000_000,
        link: link.into(),
        major: 0,
        minor: 0,
    }
}

#[test]
fn a_hostile_archive_writes_nothing_outside_the_directory() {
    let t = Tmp::new("hostile");
    let target = t.0.join("target");
    let outside = t.0.join("outside");
    std::fs::create_dir(&target).unwrap();
    std::fs::create_dir(&outside).unwrap();
    let cases = [
        vec![entry("./../escaped", ustar::Kind::File, "", 3)],
        vec![entry("/abs", ustar::Kind::File, "", 3)],
        vec![
            entry("./l", ustar::Kind::Symlink, outside.to_str().unwrap(), 0),
            entry("./l/escaped", ustar::Kind::File, "", 3),
        ],
        vec![
            entry("./f", ustar::Kind::File, "", 3),
            entry("./f", ustar::Kind::File, "", 3),
        ],
    ];
    for headers in cases {
        let a = archive_from(&headers, b"bad");
        let dir = target.join(format!("case{}", headers.len()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let e = extract(&a[..], open_dir(&dir).as_fd());
        assert!(e.is_err(), "{headers:?} was extracted");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{headers:?}"
        );
        assert!(!t.0.join("escaped").exists());
    }
}

#[test]
fn gnu_tar_archives_are_not_haul_s_format() {
    let t = Tmp::new("gnu");
    std::fs::write(t.0.join("f"), b"x").unwrap();
    let out = std::process::Command::new("tar")
        .args(["--create", "--gzip", "--directory"])
        .arg(&t.0)
        .arg(".")
        .output()
        .unwrap();
    assert!(out.status.success());
    let dir = t.0.join("x");
    std::fs::create_dir(&dir).unwrap();
    let e = extract(&out.stdout[..], open_dir(&dir).as_fd()).unwrap_err();
    assert!(e.contains("not a haul-tar gzip header"), "{e}");
}

#[test]
fn only_criu_s_exact_invocations_are_taken() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let create_args = s(&[
        "--create",
        "--gzip",
        "--no-unquote",
        "--no-wildcards",
        "--one-file-system",
        "--check-links",
        "--preserve-permissions",
        "--sparse",
        "--numeric-owner",
        "--directory",
        "/proc/self/fd/0",
        ".",
    ]);
    assert!(
        matches!(parse(&create_args), Some(Job::Create(d)) if d == Path::new("/proc/self/fd/0"))
    );
    let extract_args = s(&[
        "--extract",
        "--gzip",
        "--no-unquote",
        "--no-wildcards",
        "--directory",
        "/tmp/.criu.x",
    ]);
    assert!(matches!(parse(&extract_args), Some(Job::Extract(_))));
    for other in [
        s(&["-czf", "x.tgz", "."]),
        s(&["--create", "--gzip", "--xattrs", "--directory", "/d", "."]),
        s(&["--create", "--directory", "/d", "."]),
        s(&["--create", "--gzip", "--directory", "/d", "a", "b"]),
        s(&["--extract", "--gzip", "--directory", "/d", "member"]),
        s(&["--list", "--gzip"]),
    ] {
        assert!(parse(&other).is_none(), "{other:?}");
    }
    assert!(invoked_as_tar("/var/lib/haul/bin/tar"));
    assert!(invoked_as_tar("tar"));
    assert!(!invoked_as_tar("/usr/local/bin/haul"));
}
