"""An MLflow client that outlasts a tracking server's restart mid-request.

MLflow's client retries a request that cannot connect or gets a 5xx, but not one whose
connection breaks while the answer is read (a server killed mid-response): that request
fails at once, and a training run with it. Such a request may or may not have been done
by the server. :class:`ResilientClient` sends it again, after a pause, where sending it
twice does no harm: reads, and writes that the store applies once (a metric point it
already holds is not added again; a tag, param, status or artifact is the same the second
time). A run it creates carries a token, so a creation whose answer was lost is found
and used rather than made twice.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid

import requests
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType
from mlflow.exceptions import MlflowException

log = logging.getLogger(__name__)

# pauses before each new try, seconds: about a minute in all, beyond MLflow's own retries
PAUSES = (1, 2, 4, 8, 16, 32)
CREATE_TOKEN_TAG = "create_token"  # a run's own, to find it after a lost answer
RETRIED = ("get_run", "get_experiment_by_name", "get_metric_history", "search_runs",
           "log_batch", "set_tag", "set_terminated", "update_run", "log_text", "log_dict",
           "log_artifact", "log_figure")


def connection_broken(err: MlflowException) -> bool:
    """A request whose connection failed or broke off (MLflow wraps the error it got)."""
    cause = err.__cause__ or err.__context__
    return isinstance(cause, requests.exceptions.ConnectionError
                      | requests.exceptions.ChunkedEncodingError)


def _resent(method):
    @functools.wraps(method)
    def resent(self, *args, **kwargs):
        for pause in PAUSES:
            try:
                return method(self, *args, **kwargs)
            except MlflowException as err:
                if not connection_broken(err):
                    raise
                log.warning("%s: the tracking server's connection broke off; sending it "
                            "again in %d s", method.__name__, pause)
                time.sleep(pause)
        return method(self, *args, **kwargs)

    return resent


class ResilientClient(MlflowClient):
    """:class:`mlflow.MlflowClient` whose requests in :data:`RETRIED`, and run creation,
    are sent again when the server's connection breaks off."""

    def create_run(self, experiment_id: str, start_time: int | None = None,
                   tags: dict[str, str] | None = None, run_name: str | None = None) -> Run:
        """A new run; when the answer to its creation was lost, the run the server made,
        if it made one (found by its :data:`CREATE_TOKEN_TAG`)."""
        token = uuid.uuid4().hex
        tags = {**(tags or {}), CREATE_TOKEN_TAG: token}
        for pause in PAUSES:
            try:
                return super().create_run(experiment_id, start_time, tags, run_name)
            except MlflowException as err:
                if not connection_broken(err):
                    raise
                log.warning("create_run: the tracking server's connection broke off; "
                            "looking for the run in %d s", pause)
                time.sleep(pause)
                made = self.search_runs([experiment_id], f"tags.{CREATE_TOKEN_TAG} = '{token}'",
                                        run_view_type=ViewType.ALL, max_results=1)
                if made:
                    return made[0]
        return super().create_run(experiment_id, start_time, tags, run_name)


for _name in RETRIED:
    setattr(ResilientClient, _name, _resent(getattr(MlflowClient, _name)))
