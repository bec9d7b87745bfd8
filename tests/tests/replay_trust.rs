//! `replayd trust install` and `uninstall` in each system trust store layout replayd knows,
//! built for real in a private mount namespace so the host's store is never touched: `/etc`
//! is an overlay whose changes land in a temporary directory, and Debian's anchor directory
//! a tmpfs.
//!
//! - Debian/Ubuntu: the host's own `update-ca-certificates` rebuilds
//!   `/etc/ssl/certs/ca-certificates.crt`.
//! - Fedora/RHEL: `/etc/pki/ca-trust/source/anchors/`, and an `update-ca-trust` that runs the
//!   `trust extract` commands of Fedora's script (p11-kit, configured with Fedora's trust
//!   paths) into `/etc/pki/ca-trust/extracted/`, which `/etc/pki/tls/certs/ca-bundle.crt`
//!   points into.
//! - Arch: p11-kit's real `trust anchor --store`, configured with Arch's trust paths; p11-kit
//!   then runs its `trust-extract-compat` hook, which on Arch runs `update-ca-trust`, whose
//!   `trust extract` rebuilds `/etc/ca-certificates/extracted/tls-ca-bundle.pem`, the target of
//!   `/etc/ssl/certs/ca-certificates.crt`.
//!
//! In each, the replay CA must end up in the bundle that layout's TLS clients read, proven by
//! curl verifying replayd's certificate with nothing but that bundle, and be gone from it after
//! `uninstall` (curl then refuses replayd's certificate).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use llmsim_tests::{TestNetns, privileged, replayd, run_command, snapshot::openai_models};

const TIMEOUT: Duration = Duration::from_secs(120);

/// curl's exit code for a peer certificate it cannot verify.
const CURL_PEER_FAILED_VERIFICATION: &str = "60";

/// p11-kit's trust module configured with a distribution's trust paths: the writable one in
/// `/etc`, then `$WORK/shipped`, standing in for the read-only one in `/usr/share` (which the
/// host does not have), with the host's root CAs as the anchors the distribution ships. p11-kit
/// reads a module file in `/etc/pkcs11/modules/` in place of the packaged one of that name.
fn p11kit_module(etc_path: &str) -> String {
    format!(
        "mkdir -p /etc/pkcs11/modules \"$WORK/shipped/anchors\"\n\
         cp /etc/ssl/certs/ca-certificates.crt \"$WORK/shipped/anchors/\"\n\
         printf '%s\\n' 'module: p11-kit-trust.so' 'priority: 1' 'trust-policy: yes' \
         \"x-init-reserved: paths={etc_path}:$WORK/shipped\" > /etc/pkcs11/modules/p11-kit-trust.module\n"
    )
}

/// Writes an executable script `$BIN/NAME`.
fn script(name: &str, body: &str) -> String {
    format!(
        "cat > \"$BIN/{name}\" <<'EOF'\n#!/bin/sh\nset -e\n{body}EOF\nchmod +x \"$BIN/{name}\"\n"
    )
}

/// A layout: the shell lines that build it, and the bundle its TLS clients read.
struct Layout {
    name: &'static str,
    setup: String,
    bundle: &'static str,
    /// What `replayd trust install` names the layout.
    install_says: &'static str,
}

fn debian() -> Layout {
    Layout {
        name: "Debian",
        setup: String::new(),
        bundle: "/etc/ssl/certs/ca-certificates.crt",
        install_says: "Debian/Ubuntu, update-ca-certificates",
    }
}

fn fedora() -> Layout {
    // The extraction commands of Fedora's update-ca-trust (ca-certificates package) for the
    // OpenSSL trust bundle and the PEM bundles.
    let update = script(
        "update-ca-trust",
        "[ \"$1\" = extract ] || { echo \"update-ca-trust: unknown command $1\" >&2; exit 1; }\n\
         DEST=/etc/pki/ca-trust/extracted\n\
         trust extract --format=openssl-bundle --filter=certificates --overwrite --comment $DEST/openssl/ca-bundle.trust.crt\n\
         trust extract --format=pem-bundle --filter=ca-anchors --overwrite --comment --purpose server-auth $DEST/pem/tls-ca-bundle.pem\n\
         trust extract --format=pem-bundle --filter=ca-anchors --overwrite --comment --purpose email $DEST/pem/email-ca-bundle.pem\n\
         trust extract --format=pem-bundle --filter=ca-anchors --overwrite --comment --purpose code-signing $DEST/pem/objsign-ca-bundle.pem\n",
    );
    Layout {
        name: "Fedora",
        setup: format!(
            "{}mkdir -p /etc/pki/ca-trust/source/anchors /etc/pki/ca-trust/extracted/pem \
             /etc/pki/ca-trust/extracted/openssl /etc/pki/tls/certs\n\
             ln -s /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem /etc/pki/tls/certs/ca-bundle.crt\n\
             {update}update-ca-trust extract\n",
            p11kit_module("/etc/pki/ca-trust/source")
        ),
        bundle: "/etc/pki/tls/certs/ca-bundle.crt",
        install_says: "Fedora/RHEL, update-ca-trust",
    }
}

fn arch() -> Layout {
    // Arch's update-ca-trust (ca-certificates-utils) extracting the TLS bundle, and p11-kit's
    // hook as Arch ships it; Debian's p11-kit looks for the hook in /usr/libexec/p11-kit.
    let update = script(
        "update-ca-trust",
        "DEST=/etc/ca-certificates/extracted\n\
         trust extract --format=openssl-bundle --filter=certificates --overwrite --comment $DEST/ca-bundle.trust.crt\n\
         trust extract --format=pem-bundle --filter=ca-anchors --overwrite --comment --purpose server-auth $DEST/tls-ca-bundle.pem\n",
    );
    Layout {
        name: "Arch",
        setup: format!(
            "{}mkdir -p /etc/ca-certificates/trust-source/anchors /etc/ca-certificates/extracted\n\
             rm -f /etc/ssl/certs/ca-certificates.crt\n\
             ln -s ../../ca-certificates/extracted/tls-ca-bundle.pem /etc/ssl/certs/ca-certificates.crt\n\
             {update}mount -t tmpfs tmpfs /usr/libexec/p11-kit\n\
             printf '#!/bin/sh\\nexec update-ca-trust extract\\n' > /usr/libexec/p11-kit/trust-extract-compat\n\
             chmod +x /usr/libexec/p11-kit/trust-extract-compat\n\
             update-ca-trust extract\n",
            p11kit_module("/etc/ca-certificates/trust-source")
        ),
        bundle: "/etc/ssl/certs/ca-certificates.crt",
        install_says: "Arch, trust anchor",
    }
}

/// The base64 body of a PEM certificate, which a bundle's other formatting cannot change.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn install_and_uninstall(layout: &Layout) {
    let work = tempfile::tempdir().expect("tempdir");
    let (snapshot, answer) = openai_models();
    let offline = TestNetns::offline();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).expect("bin directory");
    let netns_prefix: Vec<String> = offline
        .exec_prefix()
        .iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    // Each step's output and exit code go to files in $WORK, read once the namespace is gone.
    let script = format!(
        "set -eu\n\
         mkdir -p \"$WORK/etc-upper\" \"$WORK/etc-work\"\n\
         mount -t overlay overlay -o \"lowerdir=/etc,upperdir=$WORK/etc-upper,workdir=$WORK/etc-work\" /etc\n\
         mount -t tmpfs tmpfs /usr/local/share/ca-certificates\n\
         export PATH=\"$BIN:$PATH\"\n\
         {setup}\
         step() {{ name=$1; shift; rc=0; \"$@\" >\"$WORK/$name.out\" 2>\"$WORK/$name.err\" || rc=$?; echo $rc >\"$WORK/$name.rc\"; }}\n\
         curl_replayd() {{ {netns} \"$REPLAYD\" --in \"$SNAPSHOT\" --ca-dir \"$CA_DIR\" -- curl --silent --show-error --max-time 20 \
         --cacert {bundle} https://api.openai.com/v1/models; }}\n\
         step install \"$REPLAYD\" trust --ca-dir \"$CA_DIR\" install\n\
         cat {bundle} >\"$WORK/installed.pem\"\n\
         step curl-installed curl_replayd\n\
         step uninstall \"$REPLAYD\" trust --ca-dir \"$CA_DIR\" uninstall\n\
         cat {bundle} >\"$WORK/uninstalled.pem\"\n\
         step curl-uninstalled curl_replayd\n\
         step uninstall-again \"$REPLAYD\" trust --ca-dir \"$CA_DIR\" uninstall\n",
        setup = layout.setup,
        netns = netns_prefix.join(" "),
        bundle = layout.bundle,
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("WORK", work.path())
        .env("BIN", &bin)
        .env("REPLAYD", replayd())
        .env("SNAPSHOT", snapshot.path())
        .env("CA_DIR", work.path().join("ca"));
    let what = format!("replayd trust in the {} layout", layout.name);
    let output = run_command(cmd, &what, TIMEOUT);
    assert!(output.status.success(), "{output}");

    let step = |name: &str| {
        let rc = read(&work.path().join(format!("{name}.rc")));
        let out = read(&work.path().join(format!("{name}.out")));
        let err = read(&work.path().join(format!("{name}.err")));
        (rc.trim().to_owned(), out, err)
    };
    let ca = pem_body(&read(&work.path().join("ca/ca-cert.pem")));
    let name = layout.name;

    let (rc, _, err) = step("install");
    assert_eq!(rc, "0", "{name}: install failed: {err}");
    assert!(
        err.contains(&format!(
            "into the system trust store ({})",
            layout.install_says
        )),
        "{name}: install names another layout: {err}"
    );
    assert!(
        pem_body(&read(&work.path().join("installed.pem"))).contains(&ca),
        "{name}: the replay CA is not in {} after install",
        layout.bundle
    );
    let (rc, out, err) = step("curl-installed");
    assert_eq!(
        rc, "0",
        "{name}: curl with {} refused replayd: {err}",
        layout.bundle
    );
    assert_eq!(out, answer.to_string(), "{name}: curl's answer");

    let (rc, _, err) = step("uninstall");
    assert_eq!(rc, "0", "{name}: uninstall failed: {err}");
    assert!(
        err.contains("removed the replay CA from the system trust store"),
        "{name}: {err}"
    );
    assert!(
        !pem_body(&read(&work.path().join("uninstalled.pem"))).contains(&ca),
        "{name}: the replay CA is still in {} after uninstall",
        layout.bundle
    );
    let (rc, out, err) = step("curl-uninstalled");
    assert_eq!(
        rc, CURL_PEER_FAILED_VERIFICATION,
        "{name}: curl after uninstall: {out}{err}"
    );
    let (rc, _, err) = step("uninstall-again");
    assert_eq!(rc, "0", "{name}: second uninstall failed: {err}");
    assert!(
        err.contains("the replay CA was not in the system trust store"),
        "{name}: {err}"
    );
}

#[test]
fn trust_install_and_uninstall_in_debians_layout() {
    if privileged("replayd trust, Debian layout") {
        install_and_uninstall(&debian());
    }
}

#[test]
fn trust_install_and_uninstall_in_fedoras_layout() {
    if privileged("replayd trust, Fedora layout") {
        install_and_uninstall(&fedora());
    }
}

#[test]
fn trust_install_and_uninstall_in_archs_layout() {
    if privileged("replayd trust, Arch layout") {
        install_and_uninstall(&arch());
    }
}
