"""``compose-operator``: the console script that runs the CompositionJob operator.

Reads the settings from ``COMPOSE_*`` environment variables (exit status 2 with one line per bad
variable), starts the Prometheus endpoint, and runs kopf with the handlers of
:mod:`compose_operator.handlers`: cluster-wide or in the listed namespaces, with a liveness
endpoint and active/standby peering unless ``COMPOSE_STANDALONE`` is true.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import socket
import sys
from collections.abc import Mapping, Sequence

import kopf

from compose_api import tracing
from compose_operator import handlers, kubeapi, metrics, peering, reconciler, retention, settings

SERVICE_NAME = "compose-operator"  # OpenTelemetry's service.name, unless OTEL_SERVICE_NAME says

ENVIRONMENT_HELP = """\
environment (all optional unless marked):
  COMPOSE_PROFILES_PATH            profiles.yaml (required; the chart mounts it from a ConfigMap)
  COMPOSE_NAMESPACES               comma-separated namespaces to watch; empty: cluster-wide
  COMPOSE_INFERENCE_IMAGE          default inference image (a profile may name its own)
  COMPOSE_INFERENCE_SERVICE_ACCOUNT  service account of the inference pods (S3 access)
  COMPOSE_WORKER_SERVICE_ACCOUNT   service account of the pool workers (default compose-worker)
  COMPOSE_DEFAULT_POOLS            profile=pool,...: the pool of jobs that name none
  COMPOSE_OUTPUT_BUCKET            bucket when spec.output.bucket is empty
  COMPOSE_OUTPUT_PREFIX            key prefix when spec.output.prefix is empty
  COMPOSE_RESULT_URL_BASE          https base of status.result.url (default: the S3 URL)
  COMPOSE_AWS_REGION               region of the bucket (default us-east-1)
  COMPOSE_S3_ENDPOINT_URL          S3 endpoint passed to the pods (MinIO)
  COMPOSE_MAX_RUNNING_PER_NAMESPACE  running jobs per namespace; 0: no cap
  COMPOSE_MAX_RUNNING_PER_OWNER    running jobs per owner label and namespace; 0: no limit
  COMPOSE_QUEUE_POSITION_REFRESH_SECONDS  rewrite a changed queue position at most this often
  COMPOSE_JOB_TTL_SECONDS          ttlSecondsAfterFinished of the child Jobs (default 3600; at
                                   600 or more a Job is created without waiting for its
                                   intent write: README, restart safety)
  COMPOSE_METRICS_PORT             Prometheus /metrics port (default 8080; 0: off)
  COMPOSE_HEALTH_PORT              liveness /healthz port (default 8081; 0: off)
  COMPOSE_PEERING_NAME             kopf peering object (active/standby)
  COMPOSE_PEERING_PRIORITY         base peering priority of the instances
  COMPOSE_PEERING_PRIORITY_JITTER  true (default): add a stable 0..999 offset from the pod name
  COMPOSE_STANDALONE               true: no peering
  COMPOSE_RETENTION_TTL_SECONDS_AFTER_FINISHED
                                   delete finished jobs after this long unless their
                                   spec.ttlSecondsAfterFinished says otherwise (default 7 days;
                                   none: keep)
  COMPOSE_RETENTION_DELETE_RESULTS true: remove the result object with the job
  COMPOSE_MODEL_CACHE              model cache: an absolute node path or a PVC name
  COMPOSE_KUBE_URL                 plain http URL of the API (tests, benchmarks)
  COMPOSE_RECONCILE_INTERVAL_SECONDS  safety-net sweep interval (default 10)
  COMPOSE_STATUS_COALESCE_SECONDS  same-phase status progress written at most this often (5)
  COMPOSE_STARTING_PROGRESS_SECONDS  ... and a starting Job's normal progress (30; warnings: 5)
  COMPOSE_LOG_LEVEL                DEBUG, INFO, WARNING or ERROR
  COMPOSE_SETTINGS_FILE            KEY=VALUE file (a mounted ConfigMap); the environment wins
  OTEL_EXPORTER_OTLP_ENDPOINT      OTLP/HTTP receiver (a collector's :4318): traces the jobs, and
                                   is handed on to the Job pods and workers with the other OTEL_*
                                   export settings; unset: tracing off
"""


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="compose-operator",
        description="Run the CompositionJob operator (compose.nextunicorn.dev/v1alpha1): "
        "one GPU batch/v1 Job per CompositionJob, status from its pods.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _pod_name() -> str:
    """The pod name: POD_ID when the chart sets it, else HOSTNAME (a pod's hostname)."""
    return os.environ.get("POD_ID") or os.environ.get("HOSTNAME") or socket.gethostname()


def _identity() -> str:
    """This instance in kopf's peering object."""
    return f"{_pod_name()}/{os.getpid()}/{secrets.token_hex(3)}"


async def _ensure_peering(
    client: kubeapi.KubeClient, config: settings.OperatorSettings, log: logging.Logger
) -> None:
    """The peering object(s) kopf meets the other replicas in, created when missing.

    Namespaces given as glob patterns get none: kopf cannot name them in advance either.
    """
    targets: list[str | None] = (
        [None]
        if config.clusterwide
        else [ns for ns in config.namespaces if not any(c in ns for c in "*?[!")]
    )
    for namespace in targets:
        if await client.ensure_peering(config.peering_name, namespace):
            where = f"in {namespace}" if namespace else "cluster-wide"
            log.info("created the peering object %s %s", config.peering_name, where)


async def run(
    config: settings.OperatorSettings, kept: retention.RetentionSettings | None = None
) -> None:
    """Run the operator until it is stopped (SIGINT/SIGTERM)."""
    log = logging.getLogger("compose_operator")

    async def login() -> kopf.ConnectionInfo:
        return await handlers.connection(config, log)

    client = kubeapi.KubeClient(login)
    kept = kept or retention.RetentionSettings()
    runtime = handlers.Runtime(
        retention=retention.Retention(
            kept,
            delete_job=client.delete_composition_job,
            delete_object=retention.s3_object_deleter(
                region=config.aws_region, endpoint_url=config.s3_endpoint_url
            )
            if kept.delete_results
            else None,
        ),
        settings=config,
        reconciler=reconciler.Reconciler(config, client, metrics_=metrics.Metrics()),
        identity=_identity(),
        priority=peering.effective_priority(config, _pod_name()),
    )
    runtime.reconciler.metrics.serve(config.metrics_port)
    if not config.standalone:
        await _ensure_peering(client, config, log)
    liveness = f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
    await kopf.operator(
        clusterwide=config.clusterwide,
        namespaces=list(config.namespaces),
        standalone=config.standalone,
        priority=runtime.priority,
        # Naming the peering makes it mandatory: without the kopf.dev peering CRDs the operator
        # waits rather than risking two active instances. Standalone needs no peering at all.
        peering_name=None if config.standalone else config.peering_name,
        liveness_endpoint=liveness,
        identity=runtime.identity,  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        memo=kopf.Memo(runtime=runtime),
    )


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    _parser().parse_args(argv)
    try:
        config = settings.from_environment(os.environ if environ is None else environ)
        kept = retention.RetentionSettings.from_environment(
            os.environ if environ is None else environ
        )
    except (settings.SettingsError, ValueError) as error:
        print(f"compose-operator: invalid settings:\n{error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        tracing.configure(SERVICE_NAME)
    except tracing.SettingsError as error:
        print(f"compose-operator: invalid settings:\n{error}", file=sys.stderr)
        return 2
    if config.log_level != "DEBUG":
        # kopf logs "Handler ... succeeded." at INFO for every event of every object; the
        # operator logs (and posts Events for) the status transitions instead.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        asyncio.run(run(config, kept))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
