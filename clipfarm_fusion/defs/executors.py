"""The executor every job of the code location runs its steps on, chosen when the code location loads.

`CLIPFARM_EXECUTOR` picks it, so one image serves a laptop, a Celery fleet and a Kubernetes cluster:

- `multiprocess` (default): one spawned process per step on the machine that runs the run, at most
  `CLIPFARM_MAX_CONCURRENT` at once (default: one per CPU). Spawned, never forked: delta-rs's tokio
  runtime panics in a forked child of a process that has used it.
- `in_process`: every step in the run's own process, one after another (debugging, small days).
- `celery`: each step is a Celery task on the workers of broker `CLIPFARM_CELERY_BROKER` (default
  `redis://localhost:6379/0`), results in `CLIPFARM_CELERY_BACKEND` (default: the broker). Needs the
  `celery` extra.
- `k8s`: each step is a Kubernetes Job (`dagster_k8s.k8s_job_executor`), which takes image, namespace
  and env from the K8sRunLauncher; `CLIPFARM_MAX_CONCURRENT` caps the pods of one run. Needs the `k8s`
  extra.

The Celery and Kubernetes libraries are imported only when chosen, so neither has to be installed
otherwise. Per-run values (chunk_size and the rest) belong in the run's resource config, which every
step sees wherever it runs; the environment of the process that loads the code location need not be
the workers'.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dagster import ExecutorDefinition, in_process_executor, multiprocess_executor

from clipfarm_fusion.errors import ConfigError

EXECUTOR_ENV = "CLIPFARM_EXECUTOR"
MAX_CONCURRENT_ENV = "CLIPFARM_MAX_CONCURRENT"
CELERY_BROKER_ENV = "CLIPFARM_CELERY_BROKER"
CELERY_BACKEND_ENV = "CLIPFARM_CELERY_BACKEND"
DEFAULT_CELERY_BROKER = "redis://localhost:6379/0"
CHOICES = ("multiprocess", "in_process", "celery", "k8s")


def executor_from_env(env: Mapping[str, str] = os.environ) -> ExecutorDefinition:
    """The executor `env` names; a ConfigError naming the choices, or the extra to install, otherwise."""
    choice = env.get(EXECUTOR_ENV) or "multiprocess"
    if choice == "multiprocess":
        return multiprocess_executor.configured(
            {"max_concurrent": _max_concurrent(env), "start_method": {"spawn": {}}}
        )
    if choice == "in_process":
        return in_process_executor
    if choice == "celery":
        return _celery_executor(env)
    if choice == "k8s":
        return _k8s_executor(env)
    raise ConfigError(f"{EXECUTOR_ENV}={choice!r} is not an executor: choose one of {', '.join(CHOICES)}")


def _max_concurrent(env: Mapping[str, str]) -> int | None:
    """Steps of one run at once; None leaves it to the executor (one per CPU, or no cap for pods)."""
    value = env.get(MAX_CONCURRENT_ENV)
    if not value:
        return None
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit < 1:
        raise ConfigError(f"{MAX_CONCURRENT_ENV}={value!r}: give a whole number of steps, 1 or more")
    return limit


def _celery_executor(env: Mapping[str, str]) -> ExecutorDefinition:
    try:
        from dagster_celery import celery_executor
    except ImportError as exc:
        raise _missing_extra("celery", exc) from exc
    broker = env.get(CELERY_BROKER_ENV) or DEFAULT_CELERY_BROKER
    return celery_executor.configured({"broker": broker, "backend": env.get(CELERY_BACKEND_ENV) or broker})


def _k8s_executor(env: Mapping[str, str]) -> ExecutorDefinition:
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError as exc:
        raise _missing_extra("k8s", exc) from exc
    limit = _max_concurrent(env)
    return k8s_job_executor.configured({} if limit is None else {"max_concurrent": limit})


def _missing_extra(extra: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        f"{EXECUTOR_ENV}={extra} needs the {extra} extra ({exc}): pip install 'clipfarm-fusion[{extra}]'"
    )
