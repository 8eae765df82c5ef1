//! Everything written to disk before Cassandra starts: the node's directory layout,
//! `cassandra.yaml` (generated from config, user overrides merged key by key),
//! `logback.xml`, `cassandra-rackdc.properties` and the JVM command line.
//! Pure functions of the config plus one `write` step; no process handling here.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use super::row_overhead::RowOverhead;
use crate::config::Config;

/// The directories of one node, all below `node.data_dir`.
#[derive(Debug, Clone)]
pub struct NodeLayout {
    pub root: PathBuf,
    pub conf: PathBuf,
    pub data: PathBuf,
    pub commitlog: PathBuf,
    pub saved_caches: PathBuf,
    pub hints: PathBuf,
    pub cdc_raw: PathBuf,
    pub logs: PathBuf,
    pub tmp: PathBuf,
}

impl NodeLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            conf: root.join("conf"),
            data: root.join("data"),
            commitlog: root.join("commitlog"),
            saved_caches: root.join("saved_caches"),
            hints: root.join("hints"),
            cdc_raw: root.join("cdc_raw"),
            logs: root.join("logs"),
            tmp: root.join("tmp"),
        }
    }

    pub fn yaml(&self) -> PathBuf {
        self.conf.join("cassandra.yaml")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("cassandra.pid")
    }

    pub fn stdout_log(&self) -> PathBuf {
        self.logs.join("stdout.log")
    }

    fn all(&self) -> [&PathBuf; 9] {
        [
            &self.root,
            &self.conf,
            &self.data,
            &self.commitlog,
            &self.saved_caches,
            &self.hints,
            &self.cdc_raw,
            &self.logs,
            &self.tmp,
        ]
    }
}

/// The generated `cassandra.yaml` as a value, before user overrides.
pub fn base_yaml(config: &Config, layout: &NodeLayout) -> Value {
    let n = &config.node;
    let mut y = json!({
        "cluster_name": n.cluster_name,
        "num_tokens": n.num_tokens,
        "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
        "endpoint_snitch": "GossipingPropertyFileSnitch",
        "seed_provider": [{
            "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
            "parameters": [{"seeds": config.seed_list().join(",")}],
        }],
        "listen_address": n.address.to_string(),
        "rpc_address": n.address.to_string(),
        "storage_port": n.storage_port,
        "native_transport_port": n.native_port,
        // The Rust driver speaks protocol v4 only.
        "native_transport_allow_older_protocols": true,
        "commitlog_sync": "periodic",
        "commitlog_sync_period": "10000ms",
        "data_file_directories": [layout.data.display().to_string()],
        "commitlog_directory": layout.commitlog.display().to_string(),
        "saved_caches_directory": layout.saved_caches.display().to_string(),
        "hints_directory": layout.hints.display().to_string(),
        "cdc_raw_directory": layout.cdc_raw.display().to_string(),
        // Every flushed SSTable is hard-linked under <table>/backups/ for
        // incrementals; off with them, or nothing would remove the links.
        "incremental_backups": config.backup.incremental,
        "auto_snapshot": true,
        "start_native_transport": true,
    });
    let m = y.as_object_mut().expect("object literal");
    if let Some(tokens) = &n.initial_token {
        m.insert("initial_token".into(), json!(tokens));
    } else if let Some(rf) = n.allocate_tokens_for_rf {
        m.insert(
            "allocate_tokens_for_local_replication_factor".into(),
            json!(rf),
        );
    }
    if let Some(auto_bootstrap) = n.auto_bootstrap {
        m.insert("auto_bootstrap".into(), json!(auto_bootstrap));
    }
    if n.heap.as_u64() <= bytesize::ByteSize::gib(1).as_u64() {
        // Small heaps (tests, laptops) need small memtables and caches, or the node
        // spends its life in GC.
        for (k, v) in [
            ("memtable_heap_space", json!("64MiB")),
            ("memtable_offheap_space", json!("64MiB")),
            ("key_cache_size", json!("16MiB")),
            ("file_cache_size", json!("32MiB")),
            ("concurrent_reads", json!(8)),
            ("concurrent_writes", json!(8)),
            ("concurrent_compactors", json!(1)),
        ] {
            m.insert(k.into(), v);
        }
    }
    y
}

/// Merges `overrides` into `base` key by key: maps merge recursively, anything else
/// (scalars, lists) replaces the base value.
pub fn merge(base: &mut Value, overrides: &Value) {
    match (base, overrides) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// The final `cassandra.yaml` text.
pub fn cassandra_yaml(config: &Config, layout: &NodeLayout) -> anyhow::Result<String> {
    let mut y = base_yaml(config, layout);
    let overrides = serde_json::to_value(&config.cassandra.yaml)?;
    merge(&mut y, &overrides);
    let mut text = String::from("# Generated by anchises from its configuration; edits are overwritten at start.\n# Put overrides under [cassandra.yaml] in the anchises config instead.\n");
    text.push_str(&serde_yaml_ng::to_string(&y)?);
    Ok(text)
}

pub fn rackdc_properties(config: &Config) -> String {
    format!(
        "# Generated by anchises.\ndc={}\nrack={}\nprefer_local=true\n",
        config.node.dc, config.node.rack
    )
}

/// Logs to `logs/system.log` with rotation; without a logback file Cassandra logs
/// DEBUG to the console.
pub fn logback_xml() -> &'static str {
    r#"<configuration scan="false">
  <jmxConfigurator />
  <appender name="SYSTEMLOG" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.SizeAndTimeBasedRollingPolicy">
      <fileNamePattern>${cassandra.logdir}/system.log.%d{yyyy-MM-dd}.%i.zip</fileNamePattern>
      <maxFileSize>50MB</maxFileSize>
      <maxHistory>7</maxHistory>
      <totalSizeCap>1GB</totalSizeCap>
    </rollingPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="SYSTEMLOG" />
  </root>
  <logger name="org.apache.cassandra" level="INFO"/>
</configuration>
"#
}

/// JVM options from Cassandra's `jvm-server.options` and `jvm17-server.options`
/// (without the JDK 17 exports and opens the JVM dies at startup).
const JVM_SERVER_OPTS: &[&str] = &[
    "-ea",
    "-da:net.openhft...",
    "-XX:+UseThreadPriorities",
    "-XX:+HeapDumpOnOutOfMemoryError",
    "-Xss256k",
    "-XX:+UseTLAB",
    "-XX:+ResizeTLAB",
    "-XX:+PerfDisableSharedMem",
    "-Djava.net.preferIPv4Stack=true",
    "-Dchronicle.analytics.disable=true",
    "-XX:+UseG1GC",
    "-XX:+ParallelRefProcEnabled",
    "-XX:MaxTenuringThreshold=1",
    "-XX:G1HeapRegionSize=16m",
    "-XX:G1RSetUpdatingPauseTimePercent=5",
    "-XX:MaxGCPauseMillis=300",
    "-XX:InitiatingHeapOccupancyPercent=70",
    "-Djdk.attach.allowAttachSelf=true",
    "--add-exports",
    "java.base/jdk.internal.misc=ALL-UNNAMED",
    "--add-exports",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED",
    "--add-exports",
    "java.management/com.sun.jmx.remote.security=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports",
    "java.rmi/sun.rmi.server=ALL-UNNAMED",
    "--add-exports",
    "java.sql/java.sql=ALL-UNNAMED",
    "--add-exports",
    "java.base/java.lang.ref=ALL-UNNAMED",
    "--add-exports",
    "jdk.unsupported/sun.misc=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.loader=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.ref=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.reflect=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.math=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.module=ALL-UNNAMED",
    "--add-opens",
    "java.base/jdk.internal.util.jar=ALL-UNNAMED",
    "--add-opens",
    "jdk.management/com.sun.management.internal=ALL-UNNAMED",
    "--add-opens",
    "java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.io=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.util=ALL-UNNAMED",
    "--add-opens",
    "java.base/java.nio=ALL-UNNAMED",
    "-Dio.netty.tryReflectionSetAccessible=true",
    "-Dio.netty.allocator.useCacheForAllThreads=true",
    "-Dio.netty.allocator.maxOrder=11",
    "-XX:+ExitOnOutOfMemoryError",
    // The Jolokia agent serves HTTP with the JDK's own server, which leaves Nagle's
    // algorithm on: on a kept-alive connection each answer then waits for the
    // client's delayed ACK, ~40 ms per request (sun.net.httpserver.ServerConfig).
    "-Dsun.net.httpserver.nodelay=true",
];

/// Where the JVM and its jars are, resolved once at start.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub java: PathBuf,
    pub lib_dir: PathBuf,
    pub jolokia_agent: PathBuf,
}

impl Runtime {
    /// Finds JDK 17, Cassandra's jars and the Jolokia agent, or says what is missing
    /// and how to get it.
    pub fn resolve(config: &Config) -> anyhow::Result<Runtime> {
        let home = config.cassandra_home();
        let lib_dir = home.join("lib");
        let main_jar = lib_dir.join(format!("cassandra-all-{}.jar", config.cassandra.version));
        if !main_jar.is_file() {
            anyhow::bail!(
                "cassandra {} not found at {} (run ops-scripts/fetch-cassandra.sh {} or set cassandra.home)",
                config.cassandra.version,
                main_jar.display(),
                config.cassandra.version
            );
        }
        let jolokia_agent = config.jolokia_agent();
        if !jolokia_agent.is_file() {
            anyhow::bail!(
                "jolokia agent not found at {} (run ops-scripts/fetch-cassandra.sh or set cassandra.jolokia_agent)",
                jolokia_agent.display()
            );
        }
        let java = find_java17(config.cassandra.java_home.as_deref())?;
        Ok(Runtime {
            java,
            lib_dir,
            jolokia_agent,
        })
    }
}

/// Cassandra 5.0 installs a SecurityManager at startup, which JDK 18+ refuses, so the
/// JVM must be a 17 exactly; any `java` on the PATH is not good enough.
fn find_java17(configured: Option<&Path>) -> anyhow::Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(home) = configured {
        candidates.push(home.to_path_buf());
    }
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        candidates.push(home.into());
    }
    if let Ok(entries) = std::fs::read_dir("/usr/lib/jvm") {
        let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        dirs.sort_by_key(|d| !d.to_string_lossy().contains("17"));
        candidates.extend(dirs);
    }
    for home in &candidates {
        let java = home.join("bin/java");
        if java.is_file() && java_major(&java) == Some(17) {
            return Ok(java);
        }
    }
    if let Some(home) = configured {
        anyhow::bail!("cassandra.java_home {} is not a JDK 17", home.display());
    }
    anyhow::bail!("no JDK 17 found (looked at $JAVA_HOME and /usr/lib/jvm); install one or set cassandra.java_home")
}

/// The major version `java -version` prints. Asked once per binary (path,
/// size and time) in the sidecar's life: running a JVM only to ask takes
/// 0.1–0.4 s, and every Cassandra start checks.
fn java_major(java: &Path) -> Option<u32> {
    static KNOWN: std::sync::LazyLock<Mutex<HashMap<blake3::Hash, Option<u32>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut stamp = blake3::Hasher::new();
    super::cds::stamp_file(&mut stamp, java).ok()?;
    let key = stamp.finalize();
    if let Some(&major) = KNOWN.lock().expect("java versions").get(&key) {
        return major;
    }
    let major = ask_java_major(java);
    KNOWN.lock().expect("java versions").insert(key, major);
    major
}

fn ask_java_major(java: &Path) -> Option<u32> {
    let out = std::process::Command::new(java)
        .arg("-version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stderr);
    let version = text.split('"').nth(1)?;
    version.split(['.', '-', '+']).next()?.parse().ok()
}

/// The full JVM argument list (after `java`) for this node, with the class
/// sharing of this start and the memtable row overhead recorded for it
/// (see [`super::row_overhead`]).
pub fn jvm_args(
    config: &Config,
    layout: &NodeLayout,
    rt: &Runtime,
    sharing: &super::cds::Sharing,
    row_overhead: Option<u32>,
) -> Vec<String> {
    let n = &config.node;
    let heap_mib = n.heap.as_u64() / (1024 * 1024);
    let mut args: Vec<String> = JVM_SERVER_OPTS.iter().map(|s| s.to_string()).collect();
    args.extend([
        format!("-Xms{heap_mib}M"),
        format!("-Xmx{heap_mib}M"),
        format!("-Djava.io.tmpdir={}", layout.tmp.display()),
        format!("-Dcassandra.config=file://{}", layout.yaml().display()),
        format!(
            "-Dlogback.configurationFile={}",
            layout.conf.join("logback.xml").display()
        ),
        format!("-Dcassandra.logdir={}", layout.logs.display()),
        format!("-Dcassandra.storagedir={}", layout.root.display()),
        format!("-Dcassandra-pidfile={}", layout.pid_file().display()),
        "-Dcassandra-foreground=yes".into(),
        format!("-Dcassandra.jmx.local.port={}", n.jmx_port),
        format!("-javaagent:{}", rt.lib_dir.join("jamm-0.4.0.jar").display()),
        format!(
            "-javaagent:{}=host=127.0.0.1,port={}",
            rt.jolokia_agent.display(),
            n.jolokia_port
        ),
    ]);
    if config.cassandra.fast_start {
        // Nodes off 127.0.0.1:7000 otherwise wait at least 8 s for gossip to settle,
        // and the 30 s ring delay dominates bootstrap and decommission.
        args.push("-Dcassandra.skip_wait_for_gossip_to_settle=0".into());
        args.push("-Dcassandra.ring_delay_ms=5000".into());
    }
    if let Some(dead) = n.replace_address {
        args.push(format!("-Dcassandra.replace_address_first_boot={dead}"));
    }
    args.extend(sharing.jvm_options());
    args.extend(row_overhead.map(super::row_overhead::jvm_option));
    args.extend(config.cassandra.jvm_opts.iter().cloned());
    // The jars first, as a class archive was dumped with them alone (the JVM
    // maps one only for a class path that starts with its own); then the conf
    // dir, from which GossipingPropertyFileSnitch reads
    // cassandra-rackdc.properties (no jar has one).
    args.push("-cp".into());
    args.push(format!(
        "{}/*:{}",
        rt.lib_dir.display(),
        layout.conf.display()
    ));
    args.push("org.apache.cassandra.service.CassandraDaemon".into());
    args
}

/// Creates the directories and writes every generated file.
pub fn write_node_files(config: &Config, layout: &NodeLayout) -> anyhow::Result<()> {
    for dir in layout.all() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    write_atomically(&layout.yaml(), &cassandra_yaml(config, layout)?)?;
    write_atomically(&layout.conf.join("logback.xml"), logback_xml())?;
    write_atomically(
        &layout.conf.join("cassandra-rackdc.properties"),
        &rackdc_properties(config),
    )?;
    Ok(())
}

/// Writes the node's files and returns the shell command line that starts its JVM,
/// environment included: what the supervisor runs, for inspection or comparison.
pub fn launch_line(config: &Config) -> anyhow::Result<String> {
    let layout = NodeLayout::new(&config.node.data_dir);
    let rt = Runtime::resolve(config)?;
    write_node_files(config, &layout)?;
    let mut words = vec![
        "env".to_string(),
        "MALLOC_ARENA_MAX=4".to_string(),
        rt.java.display().to_string(),
    ];
    // An archive there is mapped; none is recorded by a line run by hand.
    let sharing = match super::cds::sharing_for(config, &rt).0 {
        use_it @ super::cds::Sharing::Use(_) => use_it,
        _ => super::cds::Sharing::Off,
    };
    let row_overhead = RowOverhead::for_start(config, &layout, &rt).and_then(|o| o.known());
    words.extend(jvm_args(config, &layout, &rt, &sharing, row_overhead));
    Ok(shell_words::join(words))
}

pub(super) fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// Parses a generated yaml back into a map (for tests and `GET` views).
pub fn parse_yaml(text: &str) -> anyhow::Result<Map<String, Value>> {
    Ok(serde_yaml_ng::from_str(text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_java_binary_is_asked_its_version_once_until_it_changes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (java, calls) = (dir.path().join("java"), dir.path().join("calls"));
        let script = |version: &str| {
            format!(
                "#!/bin/sh\necho run >> {}\necho 'openjdk version \"{version}\" 2025-04-15' >&2\n",
                calls.display()
            )
        };
        std::fs::write(&java, script("17.0.15")).unwrap();
        std::fs::set_permissions(&java, std::fs::Permissions::from_mode(0o755)).unwrap();
        let runs = || std::fs::read_to_string(&calls).unwrap().lines().count();
        assert_eq!(java_major(&java), Some(17));
        assert_eq!(java_major(&java), Some(17));
        assert_eq!(runs(), 1, "the second start does not run it again");
        // Another binary at the same path (a JDK upgrade): asked again.
        std::fs::write(&java, script("21.0.7")).unwrap();
        assert_eq!(java_major(&java), Some(21));
        assert_eq!(runs(), 2);
    }

    fn config() -> Config {
        let mut c = Config::default();
        c.node.data_dir = "/srv/n1".into();
        c.node.address = "127.0.0.3".parse().unwrap();
        c.node.num_tokens = 1;
        c.node.initial_token = Some("-3074457345618258603".into());
        c
    }

    #[test]
    fn yaml_has_the_required_keys_for_cassandra_5() {
        let c = config();
        let y =
            parse_yaml(&cassandra_yaml(&c, &NodeLayout::new(&c.node.data_dir)).unwrap()).unwrap();
        assert_eq!(y["listen_address"], "127.0.0.3");
        assert_eq!(y["initial_token"], "-3074457345618258603");
        assert_eq!(y["num_tokens"], 1);
        assert_eq!(y["commitlog_directory"], "/srv/n1/commitlog");
        assert_eq!(y["data_file_directories"][0], "/srv/n1/data");
        assert_eq!(
            y["seed_provider"][0]["parameters"][0]["seeds"],
            "127.0.0.3:7000"
        );
        assert_eq!(y["incremental_backups"], true);
        assert!(y
            .get("allocate_tokens_for_local_replication_factor")
            .is_none());
    }

    #[test]
    fn user_overrides_merge_key_by_key() {
        let mut c = config();
        c.cassandra.yaml = toml::from_str(
            "concurrent_reads = 32\nauto_snapshot = false\n[replica_filtering_protection]\ncached_rows_warn_threshold = 3000\n",
        )
        .unwrap();
        let y =
            parse_yaml(&cassandra_yaml(&c, &NodeLayout::new(&c.node.data_dir)).unwrap()).unwrap();
        assert_eq!(y["concurrent_reads"], 32);
        assert_eq!(y["concurrent_writes"], 8, "untouched keys stay");
        assert_eq!(y["auto_snapshot"], false);
        assert_eq!(
            y["replica_filtering_protection"]["cached_rows_warn_threshold"],
            3000
        );
    }

    #[test]
    fn nested_maps_merge_and_lists_replace() {
        let mut base = json!({"a": {"x": 1, "y": 2}, "l": [1, 2]});
        merge(&mut base, &json!({"a": {"y": 3}, "l": [9]}));
        assert_eq!(base, json!({"a": {"x": 1, "y": 3}, "l": [9]}));
    }

    #[test]
    fn jvm_args_carry_ports_heap_and_replace_address() {
        let mut c = config();
        c.node.jmx_port = 7300;
        c.node.jolokia_port = 8800;
        c.node.replace_address = Some("127.0.0.9".parse().unwrap());
        let layout = NodeLayout::new(&c.node.data_dir);
        let rt = Runtime {
            java: "/usr/bin/java".into(),
            lib_dir: "/cache/lib".into(),
            jolokia_agent: "/cache/jolokia.jar".into(),
        };
        use super::super::cds::Sharing;
        let args = jvm_args(&c, &layout, &rt, &Sharing::Off, None);
        for expected in [
            "-Xmx512M",
            "-Dcassandra.jmx.local.port=7300",
            "-javaagent:/cache/jolokia.jar=host=127.0.0.1,port=8800",
            "-Dcassandra.config=file:///srv/n1/conf/cassandra.yaml",
            "-Dcassandra.replace_address_first_boot=127.0.0.9",
            "/cache/lib/*:/srv/n1/conf",
        ] {
            assert!(args.iter().any(|a| a == expected), "missing {expected}");
        }
        assert_eq!(
            args.last().unwrap(),
            "org.apache.cassandra.service.CassandraDaemon"
        );
        assert!(!args
            .iter()
            .any(|a| a.contains("SharedArchiveFile") || a.contains("DumpLoadedClassList")));
        let mapped = jvm_args(&c, &layout, &rt, &Sharing::Use("/cds/k.jsa".into()), None);
        assert!(mapped.contains(&"-XX:SharedArchiveFile=/cds/k.jsa".to_string()));
        let recorded = jvm_args(
            &c,
            &layout,
            &rt,
            &Sharing::Record("/cds/k.1.classlist".into()),
            None,
        );
        assert!(recorded.contains(&"-XX:DumpLoadedClassList=/cds/k.1.classlist".to_string()));
    }
}
