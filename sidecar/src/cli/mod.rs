//! The command line: `anchises node` runs the sidecar; every other command is a
//! client of a running sidecar's HTTP API (human output, or `--json` for scripts).

mod backup;
mod client;
mod output;
mod restore;

pub use backup::BackupCommand;
pub use restore::{RestoreArgs, RestoreCommand, StartArgs};

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use crate::config::{Config, DEFAULT_API_PORT};
use client::ApiClient;

#[derive(Debug, Parser)]
#[command(
    name = "anchises",
    version,
    about = "Runs Apache Cassandra nodes and clusters"
)]
pub struct Cli {
    /// The sidecar API that client commands talk to.
    #[arg(long, global = true, env = "ANCHISES_URL", default_value_t = format!("http://127.0.0.1:{DEFAULT_API_PORT}"))]
    pub url: String,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar beside a Cassandra node; with an action, act on a running one.
    Node(NodeArgs),
    /// Show the node's status.
    Status,
    /// Show the ring: tokens, endpoints, state, load, ownership.
    Ring,
    /// Show the schema of the node.
    Schema,
    /// List jobs, or show one.
    Jobs {
        /// A job id; all jobs without one.
        id: Option<String>,
    },
    /// Back up the node or the whole cluster; list, show, verify, delete and purge backups.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Restore keyspaces and tables into the running node from backups; list, show and cancel restores.
    ///
    /// Without a subcommand, starts a restore and follows its progress until it ends.
    Restore(RestoreArgs),
    /// Run the control plane, which creates and runs whole clusters.
    Control(ControlArgs),
    /// Create, list, show or delete clusters (through the control plane).
    Cluster {
        /// The control plane API.
        #[arg(long, env = "ANCHISES_CONTROL_URL", default_value_t = format!("http://127.0.0.1:{}", crate::control::DEFAULT_CONTROL_PORT))]
        control_url: String,
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Wait until the node is NORMAL and serving CQL (for bootstrap scripts).
    WaitReady {
        #[arg(long, default_value = "15m")]
        timeout: humantime::Duration,
    },
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeArgs {
    /// Configuration file (TOML); `ANCHISES_<SECTION>__<KEY>` variables override it.
    #[arg(long, short, env = "ANCHISES_CONFIG")]
    pub config: Option<PathBuf>,
    /// Write the node's files, print the JVM command line that starts it, and exit.
    #[arg(long)]
    pub print_launch: bool,
    #[command(subcommand)]
    pub action: Option<NodeCommand>,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Start Cassandra and wait until it is NORMAL.
    Start(WaitArgs),
    /// Drain and stop Cassandra.
    Stop(WaitArgs),
    /// Stop, then start and wait until NORMAL.
    Restart(WaitArgs),
    /// Drain Cassandra (flush everything, stop accepting writes).
    Drain(WaitArgs),
    /// Drop data this node no longer owns (after the cluster grew).
    Cleanup(WaitArgs),
    /// Leave the ring, streaming this node's data to the others, then stop.
    Decommission {
        /// Even if Cassandra counts too few nodes for a keyspace's replicas.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Flush memtables to SSTables.
    Flush {
        /// Only this keyspace (all keyspaces without one).
        #[arg(long, short)]
        keyspace: Option<String>,
        /// Only these tables of the keyspace.
        #[arg(long, short, requires = "keyspace")]
        table: Vec<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Args)]
pub struct ControlArgs {
    #[arg(long, env = "ANCHISES_CONTROL_LISTEN", default_value_t = std::net::SocketAddr::from(([127, 0, 0, 1], crate::control::DEFAULT_CONTROL_PORT)))]
    pub listen: std::net::SocketAddr,
    /// The coordinator store and the local nodes' directories live here.
    #[arg(long, env = "ANCHISES_CONTROL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Local nodes get 127.0.0.<N> and up.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(2..=250))]
    pub first_address: u8,
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster; waits until every node is NORMAL and prints their CQL addresses.
    Create {
        name: String,
        /// Nodes per data center.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Racks per data center.
        #[arg(long)]
        racks: Option<u32>,
        /// Data centers (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        dcs: Vec<String>,
        /// Cassandra version (a fetched 5.0.x).
        #[arg(long = "version")]
        cassandra_version: Option<String>,
        /// 1 for one token per node (default), more for vnodes.
        #[arg(long)]
        num_tokens: Option<u32>,
        /// Start from another cluster's cluster backup: CLUSTER (its newest),
        /// CLUSTER/BACKUP_ID or CLUSTER@TIME; takes its racks and tokens.
        #[arg(long, value_name = "CLUSTER[/BACKUP|@TIME]")]
        restore_from: Option<String>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// List clusters.
    List,
    /// Show a cluster: every node's slot, tokens and state.
    Show { name: String },
    /// Grow every data center to NODES nodes, one at a time, then clean up.
    Grow {
        name: String,
        #[arg(long)]
        nodes: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Shrink every data center to NODES nodes by decommissioning, one at a time.
    Shrink {
        name: String,
        #[arg(long)]
        nodes: u64,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop every node of a cluster and forget it.
    Delete {
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Return once the job is started instead of waiting for its end.
    #[arg(long)]
    pub no_wait: bool,
}

pub fn main(cli: Cli) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(&cli.url);
    let json_out = cli.json;
    match cli.command {
        Command::Node(NodeArgs {
            config,
            print_launch: true,
            action: None,
        }) => {
            let config = Config::load(config.as_deref())?;
            println!("{}", crate::cassandra::files::launch_line(&config)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeArgs {
            config,
            action: None,
            ..
        }) => {
            let config = Config::load(config.as_deref())?;
            crate::init_tracing(&config);
            crate::run(config).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Node(NodeArgs {
            action: Some(action),
            ..
        }) => {
            let (name, body, wait) = match action {
                NodeCommand::Start(w) => ("start", Value::Null, w),
                NodeCommand::Stop(w) => ("stop", Value::Null, w),
                NodeCommand::Restart(w) => ("restart", Value::Null, w),
                NodeCommand::Drain(w) => ("drain", Value::Null, w),
                NodeCommand::Cleanup(w) => ("cleanup", Value::Null, w),
                NodeCommand::Decommission { force, wait } => {
                    ("decommission", json!({"force": force}), wait)
                }
                NodeCommand::Flush {
                    keyspace,
                    table,
                    wait,
                } => (
                    "flush",
                    json!({"keyspace": keyspace, "tables": table}),
                    wait,
                ),
            };
            let job = api.post(&format!("/v1/node/{name}"), &body).await?;
            let job = if wait.no_wait {
                job
            } else {
                api.wait_job(&job).await?
            };
            output::job(&job, json_out);
            Ok(if job["state"] == "failed" {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Status => {
            let process = api.get("/v1/node/process").await?;
            let node = api.get_optional("/v1/node").await?;
            output::status(&process, node.as_ref(), json_out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Ring => {
            output::ring(&api.get("/v1/node/ring").await?, json_out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            output::schema(&api.get("/v1/node/schema").await?, json_out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { id: Some(id) } => {
            output::job(&api.get(&format!("/v1/jobs/{id}")).await?, json_out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { id: None } => {
            output::jobs(&api.get("/v1/jobs").await?, json_out);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup { command } => backup::run(&api, command, json_out).await,
        Command::Restore(args) => restore::run(&api, args, json_out).await,
        Command::Control(args) => {
            let config = Config::default();
            crate::init_tracing(&config);
            let data_dir = args.data_dir.unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from("/var/lib"))
                    .join(".local/share/anchises/control")
            });
            crate::control::run(crate::control::ControlConfig {
                listen: args.listen,
                data_dir,
                first_octet: args.first_address,
                bin: std::env::current_exe()?,
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster {
            control_url,
            command,
        } => cluster_command(ApiClient::new(&control_url), command, json_out).await,
        Command::WaitReady { timeout } => {
            let mode = api.wait_ready(Duration::from(timeout)).await?;
            if json_out {
                println!("{}", json!({"operation_mode": mode}));
            } else {
                println!("node is {mode}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn cluster_command(
    api: ApiClient,
    command: ClusterCommand,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let finish = |job: Value| {
        output::job(&job, json_out);
        if job["state"] == "failed" {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    };
    match command {
        ClusterCommand::Create {
            name,
            nodes,
            racks,
            dcs,
            cassandra_version,
            num_tokens,
            restore_from,
            wait,
        } => {
            let mut body = json!({"name": name, "nodes": nodes});
            if let Some(from) = restore_from {
                body["restore_from"] = json!(from);
            }
            if let Some(r) = racks {
                body["racks"] = json!(r);
            }
            if !dcs.is_empty() {
                body["dcs"] = json!(dcs);
            }
            if let Some(v) = cassandra_version {
                body["cassandra_version"] = json!(v);
            }
            if let Some(t) = num_tokens {
                body["num_tokens"] = json!(t);
            }
            let created = api.post("/v1/clusters", &body).await?;
            if wait.no_wait {
                return Ok(finish(created["job"].clone()));
            }
            if !json_out {
                eprintln!("creating cluster {name}: starting {nodes} node(s) per data center…");
            }
            let job = api.wait_job(&created["job"]).await?;
            if job["state"] == "succeeded" && !json_out {
                for cql in job["result"]["cql"].as_array().into_iter().flatten() {
                    println!("cql {}", cql.as_str().unwrap_or_default());
                }
                return Ok(ExitCode::SUCCESS);
            }
            Ok(finish(job))
        }
        ClusterCommand::List => {
            output::clusters(&api.get("/v1/clusters").await?, json_out);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Show { name } => {
            output::cluster(&api.get(&format!("/v1/clusters/{name}")).await?, json_out);
            Ok(ExitCode::SUCCESS)
        }
        ClusterCommand::Grow { name, nodes, wait } => {
            resize(&api, &name, "grow", nodes, wait, json_out).await
        }
        ClusterCommand::Shrink { name, nodes, wait } => {
            resize(&api, &name, "shrink", nodes, wait, json_out).await
        }
        ClusterCommand::Delete { name, wait } => {
            let job = api.delete(&format!("/v1/clusters/{name}")).await?;
            let job = if wait.no_wait {
                job
            } else {
                api.wait_job(&job).await?
            };
            Ok(finish(job))
        }
    }
}

async fn resize(
    api: &ApiClient,
    name: &str,
    how: &str,
    nodes: u64,
    wait: WaitArgs,
    json_out: bool,
) -> anyhow::Result<ExitCode> {
    let job = api
        .post(
            &format!("/v1/clusters/{name}/{how}"),
            &json!({"nodes": nodes}),
        )
        .await?;
    let job = if wait.no_wait {
        job
    } else {
        if !json_out {
            eprintln!(
                "{how}ing cluster {name} to {nodes} node(s) per data center, one node at a time…"
            );
        }
        api.wait_job(&job).await?
    };
    output::job(&job, json_out);
    Ok(if job["state"] == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
