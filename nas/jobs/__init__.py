"""The job runtime (`hwnas.jobs`, folder `nas/jobs/`): the whole method as Python calls, on one database.

    from hwnas.db import Database
    from hwnas import jobs

    db = Database()                                            # $HWNAS_DB_URL, else SQLite in $HWNAS_HOME
    job = jobs.create_job(db, jobs.SearchSpec(space="quickstart", device="local-cpu", latency_ms=8.0))
    jobs.run_job(db, job)                                      # search, then the front measured on the device
    best = jobs.front(db, job)[0]
    jobs.export_candidate(db, job, best.candidate.id, fmt="onnx", out_dir="bundle")

It owns job specs and rows, leases (one runner per job), the run loop (progress goes to a callback),
fitness scoring (in process or on Ray actors), front verification, exports, launchers and the
reconciler, the supernet registry, and the workspace-aware pipeline steps (`train_supernet`,
`tune_kernels`, `measure_subnets`, `fit_predictors`) that the CLI's quickstart chains.
"""

from hwnas.jobs._export import candidate_subnet, certificate_device, export_candidate, export_dir, run_export
from hwnas.jobs._launch import Launcher, RayLauncher, reconcile
from hwnas.jobs._lease import JobBusyError, JobCancelled, lease_free, runner_id
from hwnas.jobs._pipeline import (
    LatencyPrediction,
    choose_predictor,
    default_vocab_size,
    fit_predictors,
    measure_subnets,
    predict_latency,
    train_supernet,
    tune_kernels,
    tuning_records,
)
from hwnas.jobs._plot import plot_front
from hwnas.jobs._retrain import RetrainedInfo, best_member, retrained_model
from hwnas.jobs._run import run_job
from hwnas.jobs._scoring import Evaluator, LocalEvaluator, RayEvaluator, Score, init_ray, worker_resources
from hwnas.jobs._spec import (
    ACTIVE,
    JOB_STATUSES,
    RESUMABLE,
    TERMINAL,
    ExportStatus,
    FitnessConfig,
    FitnessMetric,
    JobProgress,
    JobStatus,
    PredictorPin,
    ProgressCallback,
    RetrainSpec,
    SearchSpec,
)
from hwnas.jobs._store import (
    CandidateRow,
    FrontMember,
    JobInfo,
    cancel_job,
    candidates,
    count_candidates,
    count_jobs,
    create_job,
    front,
    front_candidates,
    get_job,
    job_model_config,
    job_provenance,
    list_jobs,
    tuning_to_use,
)
from hwnas.jobs._supernets import SupernetInfo, get_supernet, list_supernets, register_supernet

__all__ = [
    "RetrainSpec",
    "RetrainedInfo",
    "best_member",
    "retrained_model",
    "ACTIVE",
    "JOB_STATUSES",
    "RESUMABLE",
    "TERMINAL",
    "CandidateRow",
    "Evaluator",
    "ExportStatus",
    "FitnessConfig",
    "FitnessMetric",
    "FrontMember",
    "JobBusyError",
    "JobCancelled",
    "JobInfo",
    "JobProgress",
    "JobStatus",
    "LatencyPrediction",
    "Launcher",
    "LocalEvaluator",
    "PredictorPin",
    "ProgressCallback",
    "RayEvaluator",
    "RayLauncher",
    "Score",
    "SearchSpec",
    "SupernetInfo",
    "cancel_job",
    "candidates",
    "count_candidates",
    "choose_predictor",
    "count_jobs",
    "create_job",
    "default_vocab_size",
    "certificate_device",
    "candidate_subnet",
    "export_candidate",
    "export_dir",
    "fit_predictors",
    "front",
    "front_candidates",
    "get_job",
    "job_model_config",
    "job_provenance",
    "get_supernet",
    "init_ray",
    "lease_free",
    "list_jobs",
    "list_supernets",
    "measure_subnets",
    "predict_latency",
    "plot_front",
    "reconcile",
    "register_supernet",
    "run_export",
    "run_job",
    "runner_id",
    "train_supernet",
    "tune_kernels",
    "tuning_records",
    "tuning_to_use",
    "worker_resources",
]
