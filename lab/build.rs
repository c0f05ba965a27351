//! Compiles the clock shim (`shim/clockshift.c`) into a shared object with the system's
//! C compiler (`$CC`, or `cc`); the lab embeds it and preloads it into its servers.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "shim/clockshift.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"))
        .join("clockshift.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .args([
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wextra",
            "-fvisibility=hidden",
            "-o",
        ])
        .arg(&out)
        .arg(src)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run the C compiler `{cc}` ({e}): run scripts/setup (it installs gcc)")
        });
    if !output.status.success() {
        panic!(
            "`{cc}` could not compile {src}:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Warnings are errors in spirit: show them.
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("cargo:warning={line}");
    }
}
