"""``auto_rebuild``: a blue/green rebuild when a projection's code version changes,
swapped only after a matching drill (see docs/security.md, "Recovery flags").

Off unless set: it changes a live build. Checked when ``safereplay follow`` starts
(a deploy restarts it) and after each of its heartbeats:

1. the live build's version differs from the registered code's, no job is active
   and none was started for this version: a rebuild job is started as the system
   (workers run it);
2. that job completed and its build is not live: a drill rebuilds the projection
   into a sandbox and compares it with the new build; only when every partition's
   checksum matches is the build swapped in (the swap itself requires that drill).
   A mismatch leaves the build for a human (``safereplay drill``, ``swap``), once.

Each step is audited as the system's (``auto.rebuild``, ``auto.rebuild.swap``) with
the flag in its parameters, and the operations switch stops both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from safereplay.recovery.drills.drill import DrillStore, require_matching_drill, run_drill
from safereplay.recovery.errors import RecoveryError
from safereplay.recovery.jobs.builds import swap
from safereplay.recovery.jobs.model import JobKind, JobState
from safereplay.recovery.jobs.plans import JobRequest, start_rebuild
from safereplay.recovery.operations.drills import live_reader, new_sandbox, raise_drill_conflict
from safereplay.recovery.operations.flags import SYSTEM_ACTOR, flag_store, run_automatic
from safereplay.recovery.security.flags import FlagName

if TYPE_CHECKING:
    from safereplay.recovery.operations.context import RecoveryContext

__all__ = ["auto_rebuild"]

_log = logging.getLogger(__name__)


def _drill_then_swap(context: RecoveryContext, name: str, build: int) -> dict[str, Any]:
    cls = context.registry[name]
    result = run_drill(
        cls(),
        live=live_reader(context),
        source=context.source,
        sandbox=new_sandbox(context),
        principal=SYSTEM_ACTOR,
        reason=f"auto_rebuild: drill of build {build} before its swap",
        build=build,
        partitions=None,
        default_partitions=context.recovery.partitions,
        options=context.runner_options(),
    )
    drills = DrillStore(context.database)
    drills.record(result)
    if not result.match:
        raise_drill_conflict(context, result)  # left for a human, shown as a conflict
        return {"swapped": False, "build": build, "drill": result.summary()}

    def gate(candidate: int) -> None:
        require_matching_drill(drills, required=True, projection=name, build=candidate)

    swapped = swap(
        store=context.projection_store,
        source=context.source,
        jobs=context.jobs,
        registry=context.registry,
        projection=name,
        build=build,
        gate=gate,
    )
    return {"swapped": True, "build": build, "drill_id": result.drill_id, "swap": str(swapped)}


def auto_rebuild(context: RecoveryContext, projections: Sequence[str]) -> list[dict[str, Any]]:
    """One step of ``auto_rebuild`` for each of ``projections`` (see the module);
    returns what was done (rebuild started, or drill and swap)."""
    flags = flag_store(context)
    done: list[dict[str, Any]] = []
    for name in projections:
        target = f"projection:{name}"
        flag = flags.effective(FlagName.AUTO_REBUILD, target)
        if not flag.enabled or context.jobs.list_jobs(projection=name, active_only=True):
            continue
        store = context.projection_store
        live = store.live_build(name)
        builds = {b.build: b for b in store.builds(name)}
        if live is None or live not in builds:
            continue
        version = context.registry[name].version
        if builds[live].version == version:
            continue
        completed = [
            job
            for job in context.jobs.list_jobs(projection=name)
            if job.kind == JobKind.REBUILD
            and job.principal == SYSTEM_ACTOR
            and job.state == JobState.COMPLETED
            and job.build in builds
            and builds[job.build].version == version
            and builds[job.build].status == "building"
        ]
        seen = flags.mark(FlagName.AUTO_REBUILD, target)
        parameters: dict[str, Any] = {
            "projection": name,
            "live_build": live,
            "live_version": builds[live].version,
            "version": version,
        }
        if completed:
            build = completed[0].build
            if seen == f"drilled:{build}":
                continue  # its drill did not match: left for a human
            action, mark = "auto.rebuild.swap", f"drilled:{build}"
            work: Any = partial(_drill_then_swap, context, name, build)
            parameters["build"] = build
        else:
            if seen == f"rebuild:{version}":
                continue  # started once for this version (it failed or was aborted)
            action, mark = "auto.rebuild", f"rebuild:{version}"
            request = JobRequest(
                principal=SYSTEM_ACTOR,
                reason=f"auto_rebuild: code version {builds[live].version} -> {version}",
            )
            work = partial(
                start_rebuild,
                request,
                projection=name,
                store=store,
                source=context.log,
                jobs=context.jobs,
                registry=context.registry,
            )
        try:
            result = run_automatic(
                context, flag=flag, action=action, parameters=parameters, work=work
            )
        except RecoveryError as exc:  # audited as failed
            _log.warning("%s of %s did not run: %s", action, name, exc)
            flags.set_mark(FlagName.AUTO_REBUILD, target, mark)
            continue
        if result is not None:
            flags.set_mark(FlagName.AUTO_REBUILD, target, mark)
            done.append({**parameters, "action": action, "result": _shown(result)})
    return done


def _shown(result: Any) -> Any:
    job_id = getattr(result, "job_id", None)
    return {"job_id": str(job_id)} if job_id is not None else result
