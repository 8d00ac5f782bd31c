//! A typed client for a node's federated control plane
//! (`proto/federated.proto`), as an engineer or member identity: submit a
//! task file, read and follow a task, download its model. The `yilian task`
//! commands, the devnet and the tests use it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use yilian_identity::Identity;
use yilian_models::ModelSpec;

use crate::pb::federated_client::FederatedClient;
use crate::{FlError, TaskFile, pb};

type Result<T, E = FlError> = std::result::Result<T, E>;

/// How to reach a node, and as whom.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The node's gRPC address (`host:port`).
    pub node: String,
    /// Directory holding the identity's cert.pem, key.pem, ledger-key.pem and ca.pem.
    pub identity: PathBuf,
}

/// A node's refusal, as the user reads it: the node's message says what to change.
fn refused(s: tonic::Status) -> FlError {
    FlError::Rpc(Box::new(s))
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|cause| FlError::File {
        path: path.to_owned(),
        cause,
    })
}

async fn client(node: &Endpoint) -> Result<FederatedClient<Channel>> {
    let identity = Identity::load(&node.identity).map_err(|cause| FlError::Identity {
        path: node.identity.clone(),
        cause,
    })?;
    let channel = yilian_identity::grpc::connect(&node.node, &identity)
        .await
        .map_err(|cause| FlError::Identity {
            path: node.identity.clone(),
            cause,
        })?;
    Ok(FederatedClient::new(channel))
}

/// Submits a task file. A training task's validation set and initial
/// weights, and an evaluation's ONNX model, are read relative to the file.
pub async fn submit(
    node: &Endpoint,
    task_file: &Path,
    weights: Option<&Path>,
) -> Result<pb::SubmitTaskResponse> {
    let text = String::from_utf8(read(task_file)?).map_err(|_| FlError::BadTaskFile {
        path: task_file.to_owned(),
        cause: Box::new(FlError::InvalidTask("it is not UTF-8 text")),
    })?;
    let base = task_file.parent().unwrap_or(Path::new("."));
    let task = match TaskFile::from_toml(&text).map_err(|cause| FlError::BadTaskFile {
        path: task_file.to_owned(),
        cause: Box::new(cause),
    })? {
        TaskFile::Training(t) => t,
        TaskFile::Evaluation(e) => {
            if weights.is_some() {
                return Err(FlError::WeightsForEvaluation);
            }
            let model = read(&base.join(&e.model))?;
            return submit_evaluation(node, text, model).await;
        }
    };
    let validation_csv = read(&base.join(&task.validation))?;
    let weights_path = weights
        .map(Path::to_path_buf)
        .or_else(|| task.initial_weights.as_ref().map(|p| base.join(p)));
    let initial_weights = weights_path.as_deref().map(read).transpose()?;
    submit_training(
        node,
        text,
        validation_csv,
        initial_weights.unwrap_or_default(),
    )
    .await
}

/// Sends a training task, its validation set and initial weights (empty:
/// the seeded initialisation) in chunks.
pub async fn submit_training(
    node: &Endpoint,
    task_toml: String,
    validation_csv: Vec<u8>,
    initial_weights: Vec<u8>,
) -> Result<pb::SubmitTaskResponse> {
    use pb::submit_task_request::Part;
    let header = pb::SubmitTaskRequest {
        part: Some(Part::Header(pb::TaskHeader {
            task_toml,
            validation_bytes: validation_csv.len() as u64,
            weights_bytes: initial_weights.len() as u64,
        })),
    };
    let part = |p| pb::SubmitTaskRequest { part: Some(p) };
    let parts = std::iter::once(header)
        .chain(chunked(&validation_csv, Part::ValidationChunk).map(part))
        .chain(chunked(&initial_weights, Part::WeightsChunk).map(part))
        .collect::<Vec<_>>();
    client(node)
        .await?
        .submit_task(tokio_stream::iter(parts))
        .await
        .map(tonic::Response::into_inner)
        .map_err(refused)
}

async fn submit_evaluation(
    node: &Endpoint,
    task_toml: String,
    model: Vec<u8>,
) -> Result<pb::SubmitTaskResponse> {
    use pb::submit_evaluation_request::Part;
    let mut parts = vec![pb::SubmitEvaluationRequest {
        part: Some(Part::Header(pb::EvaluationHeader {
            task_toml,
            model_bytes: model.len() as u64,
        })),
    }];
    parts.extend(
        chunked(&model, Part::ModelChunk).map(|p| pb::SubmitEvaluationRequest { part: Some(p) }),
    );
    client(node)
        .await?
        .submit_evaluation(tokio_stream::iter(parts))
        .await
        .map(tonic::Response::into_inner)
        .map_err(refused)
}

/// `bytes` as the messages of an upload, `CHUNK_BYTES` each.
fn chunked<'a, T>(bytes: &'a [u8], part: fn(Vec<u8>) -> T) -> impl Iterator<Item = T> + 'a
where
    T: 'a,
{
    bytes
        .chunks(crate::protocol::CHUNK_BYTES)
        .map(move |c| part(c.to_vec()))
}

/// The status of a task of either kind, with a training task's whole
/// history (read page by page; the rest of the status is the last page's).
pub async fn task_status(node: &Endpoint, task_id: &str) -> Result<pb::TaskStatusResponse> {
    use pb::task_status_response::Kind;
    let mut c = client(node).await?;
    let mut history = Vec::new();
    let mut from_round = 0;
    loop {
        let mut page = c
            .task_status(pb::TaskStatusRequest {
                task_id: task_id.into(),
                from_round,
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(refused)?;
        let Some(Kind::Training(t)) = &mut page.kind else {
            return Ok(page);
        };
        history.append(&mut t.history);
        match t.next_round.take() {
            // A server that does not move on would loop forever.
            Some(next) if next > from_round => from_round = next,
            Some(_) => return Err(FlError::Unexpected("status page that does not advance")),
            None => {
                t.history = history;
                return Ok(page);
            }
        }
    }
}

/// A training task's status.
pub async fn status(node: &Endpoint, task_id: &str) -> Result<pb::TrainingStatus> {
    match task_status(node, task_id).await?.kind {
        Some(pb::task_status_response::Kind::Training(t)) => Ok(t),
        _ => Err(FlError::NotTraining(task_id.to_owned())),
    }
}

/// Follows a training task, calling `on_event` for each event, until it
/// ends; returns how it ended.
pub async fn watch(
    node: &Endpoint,
    task_id: &str,
    mut on_event: impl FnMut(&pb::TaskEvent),
) -> Result<pb::TaskEnded> {
    let mut events = client(node)
        .await?
        .watch_task(pb::WatchTaskRequest {
            task_id: task_id.into(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    while let Some(e) = events.message().await.map_err(refused)? {
        on_event(&e);
        if let Some(pb::task_event::Event::Ended(end)) = e.event {
            return Ok(end);
        }
    }
    Err(FlError::WatchEnded(task_id.to_owned()))
}

/// The global model's file in `format`, checked against its announced
/// size and SHA-256, with the rounds closed into it.
pub async fn download(
    node: &Endpoint,
    task_id: &str,
    format: pb::ModelFormat,
) -> Result<(u32, Vec<u8>)> {
    download_with(node, task_id, format, |_, _| {}).await
}

/// [`download`], telling `progress` the bytes received and the total
/// announced after each chunk.
pub async fn download_with(
    node: &Endpoint,
    task_id: &str,
    format: pb::ModelFormat,
    mut progress: impl FnMut(u64, u64),
) -> Result<(u32, Vec<u8>)> {
    let mut chunks = client(node)
        .await?
        .download(pb::DownloadRequest {
            task_id: task_id.into(),
            format: format.into(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let first = chunks
        .message()
        .await
        .map_err(refused)?
        .ok_or(FlError::ModelDamaged("the node sent no model"))?;
    let mut bytes = first.data;
    progress(bytes.len() as u64, first.total_bytes);
    while let Some(c) = chunks.message().await.map_err(refused)? {
        bytes.extend_from_slice(&c.data);
        progress(bytes.len() as u64, first.total_bytes);
        if bytes.len() as u64 > first.total_bytes {
            return Err(FlError::ModelDamaged(
                "the node sent more bytes than it announced",
            ));
        }
    }
    if bytes.len() as u64 != first.total_bytes || Sha256::digest(&bytes)[..] != first.sha256[..] {
        return Err(FlError::ModelDamaged("its size or SHA-256 differs"));
    }
    Ok((first.rounds, bytes))
}

/// The global model as weights, via its safetensors file.
pub async fn download_model(node: &Endpoint, task_id: &str) -> Result<(ModelSpec, Vec<f32>)> {
    let (_, bytes) = download(node, task_id, pb::ModelFormat::Safetensors).await?;
    Ok(yilian_models::from_safetensors_bytes(&bytes, None)?)
}
