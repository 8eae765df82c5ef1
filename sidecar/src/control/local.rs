//! The local provider: each node of a cluster is one `anchises node` process on its
//! own loopback address 127.0.0.x, with its own directory, JMX and Jolokia ports.
//! It starts and stops those processes and remembers them in
//! `<data dir>/clusters/<cluster>/nodes.json`; which slot a node takes is the
//! registry's business, not the provider's.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tracing::{info, warn};

use crate::cassandra::supervisor::die_with_parent;

/// A node the provider started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNode {
    pub node_id: String,
    pub dc: String,
    pub rack: String,
    pub address: String,
    /// The node sidecar's API.
    pub api: String,
    pub dir: PathBuf,
}

pub struct LocalProvider {
    root: PathBuf,
    coordinator: PathBuf,
    bin: PathBuf,
    first_octet: u8,
    children: Mutex<BTreeMap<String, Child>>,
}

/// What a node needs to know of its cluster.
pub struct NodeLaunch<'a> {
    pub cluster: &'a str,
    pub dc: &'a str,
    pub rack: &'a str,
    pub node_id: String,
    pub cassandra_version: &'a str,
}

impl LocalProvider {
    pub fn new(root: &Path, coordinator: &Path, bin: PathBuf, first_octet: u8) -> Self {
        Self {
            root: root.to_path_buf(),
            coordinator: coordinator.to_path_buf(),
            bin,
            first_octet,
            children: Mutex::default(),
        }
    }

    fn nodes_file(&self, cluster: &str) -> PathBuf {
        self.root.join("clusters").join(cluster).join("nodes.json")
    }

    /// The nodes recorded for a cluster.
    pub fn nodes(&self, cluster: &str) -> Vec<LocalNode> {
        std::fs::read(self.nodes_file(cluster))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn save(&self, cluster: &str, nodes: &[LocalNode]) -> anyhow::Result<()> {
        let file = self.nodes_file(cluster);
        std::fs::create_dir_all(file.parent().expect("a parent"))?;
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(nodes)?)?;
        std::fs::rename(tmp, file)?;
        Ok(())
    }

    /// Every loopback address in use by any cluster's node.
    fn used_octets(&self) -> Vec<u8> {
        let Ok(entries) = std::fs::read_dir(self.root.join("clusters")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .flat_map(|e| self.nodes(&e.file_name().to_string_lossy()))
            .filter_map(|n| n.address.parse::<Ipv4Addr>().ok().map(|a| a.octets()[3]))
            .collect()
    }

    /// Writes a new node's config and starts its sidecar.
    pub fn launch(&self, launch: NodeLaunch<'_>) -> anyhow::Result<LocalNode> {
        let used = self.used_octets();
        let octet = (self.first_octet..=254)
            .find(|o| !used.contains(o))
            .ok_or_else(|| anyhow::anyhow!("no free loopback address left for a node"))?;
        let address = Ipv4Addr::new(127, 0, 0, octet).to_string();
        let dir = self
            .root
            .join("clusters")
            .join(launch.cluster)
            .join(&launch.node_id);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = format!(
            "# Written by anchises control (local provider).\n\
             [api]\nlisten = \"{address}:7878\"\n\n\
             [node]\ncluster_name = \"{cluster}\"\ndc = \"{dc}\"\nrack = \"{rack}\"\naddress = \"{address}\"\n\
             data_dir = \"{data}\"\njmx_port = {jmx}\njolokia_port = {jolokia}\nheap = \"512MiB\"\n\n\
             [cluster]\ncoordinator = \"{coordinator}\"\nnode_id = \"{node_id}\"\n\n\
             [cassandra]\nversion = \"{version}\"\nfast_start = true\n",
            cluster = launch.cluster,
            dc = launch.dc,
            rack = launch.rack,
            data = dir.join("node").display(),
            jmx = 17000 + octet as u16,
            jolokia = 18000 + octet as u16,
            coordinator = self.coordinator.display(),
            node_id = launch.node_id,
            version = launch.cassandra_version,
        );
        std::fs::write(dir.join("anchises.toml"), config)?;
        let node = LocalNode {
            node_id: launch.node_id,
            dc: launch.dc.to_string(),
            rack: launch.rack.to_string(),
            api: format!("http://{address}:7878"),
            address,
            dir,
        };
        let mut nodes = self.nodes(launch.cluster);
        nodes.retain(|n| n.node_id != node.node_id);
        nodes.push(node.clone());
        self.save(launch.cluster, &nodes)?;
        self.spawn(&node)?;
        info!(node = node.node_id, address = node.address, "node started");
        Ok(node)
    }

    /// Starts (again) the sidecar of a recorded node.
    pub fn spawn(&self, node: &LocalNode) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("sidecar.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("node")
            .arg("--config")
            .arg(node.dir.join("anchises.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // The node sidecars drain and stop their Cassandra if the control plane dies.
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        self.children
            .lock()
            .expect("children lock")
            .insert(node.node_id.clone(), child);
        Ok(())
    }

    /// Whether the node's sidecar process is running.
    pub fn running(&self, node_id: &str) -> bool {
        let mut children = self.children.lock().expect("children lock");
        match children.get_mut(node_id) {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Whether the node's sidecar was started here and has exited since, unasked
    /// (a deliberate stop forgets the process first).
    pub fn exited(&self, node_id: &str) -> bool {
        let mut children = self.children.lock().expect("children lock");
        match children.get_mut(node_id) {
            Some(child) => matches!(child.try_wait(), Ok(Some(_))),
            None => false,
        }
    }

    /// Stops a node's sidecar (which drains and stops Cassandra) and waits for it.
    pub async fn stop(&self, node_id: &str, timeout: Duration) {
        let child = self.children.lock().expect("children lock").remove(node_id);
        let Some(mut child) = child else { return };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        if tokio::time::timeout(timeout, child.wait()).await.is_err() {
            warn!(
                node = node_id,
                "node sidecar did not stop in time; killing it"
            );
            let _ = child.kill().await;
        }
    }

    /// Kills a node's sidecar without a chance to clean up (for failure drills).
    pub async fn kill(&self, node_id: &str) {
        let child = self.children.lock().expect("children lock").remove(node_id);
        if let Some(mut child) = child {
            let _ = child.kill().await;
        }
    }

    /// Forgets a node: its directory and its record.
    pub fn forget(&self, cluster: &str, node_id: &str) -> anyhow::Result<()> {
        self.children.lock().expect("children lock").remove(node_id);
        let mut nodes = self.nodes(cluster);
        if let Some(n) = nodes.iter().find(|n| n.node_id == node_id) {
            let _ = std::fs::remove_dir_all(&n.dir);
        }
        nodes.retain(|n| n.node_id != node_id);
        self.save(cluster, &nodes)
    }

    /// Forgets a whole cluster.
    pub fn forget_cluster(&self, cluster: &str) {
        let _ = std::fs::remove_dir_all(self.root.join("clusters").join(cluster));
    }

    /// Every cluster with recorded nodes.
    pub fn clusters(&self) -> Vec<String> {
        std::fs::read_dir(self.root.join("clusters"))
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Stops every running node (control plane shutdown).
    pub async fn stop_all(&self, timeout: Duration) {
        let ids: Vec<String> = self
            .children
            .lock()
            .expect("children lock")
            .keys()
            .cloned()
            .collect();
        futures::future::join_all(ids.iter().map(|id| self.stop(id, timeout))).await;
    }
}
