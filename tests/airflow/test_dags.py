"""The DAG files load without errors and have the described shape."""

from __future__ import annotations

import pytest

from ..servers import PROJECT

pytestmark = pytest.mark.postgres  # the Airflow metadata database


@pytest.fixture(scope="module")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT / "dags"))


def test_dags_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"fraud_retrain", "fraud_build_deploy"}


@pytest.mark.parametrize("dag_id", ["fraud_retrain", "fraud_build_deploy"])
def test_owners_retries_tags_and_limits(dagbag, dag_id: str) -> None:
    dag = dagbag.get_dag(dag_id)
    assert "fraud-mlops" in dag.tags
    assert dag.max_active_runs == 1 and not dag.catchup
    # switching the service is not retried blindly (a failure rolls back instead); every other
    # task is retried
    once = {"rollout", "smoke_check"}
    for task in dag.tasks:
        assert task.owner == "fraud-ml", task.task_id
        assert task.execution_timeout is not None, task.task_id
        if task.task_id in once:
            assert task.retries == 0, task.task_id
        else:
            assert task.retries >= 1, task.task_id


def edges(dag) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_retrain_graph(dagbag) -> None:
    dag = dagbag.get_dag("fraud_retrain")
    assert edges(dag) == {
        ("performance_check", "data_prep"),
        ("data_prep", "training"),
        ("data_prep", "deployment"),  # the gate reads the window data_prep fixed
        ("training", "deployment"),
        ("deployment", "publish_champion"),
        ("deployment", "notification"),
        ("publish_champion", "notification"),
        ("decision_lake", "decision_retention"),  # a day leaves the store once the lake has it
    }
    assert dag.get_task("notification").trigger_rule == "all_done"
    # apart from retraining; runs when the lake is skipped (no FRAUD_LAKE_URL), not when it failed
    assert dag.get_task("decision_retention").trigger_rule == "none_failed"
    outlets = dag.get_task("publish_champion").outlets
    assert [o.name for o in outlets] == ["fraud_champion"]
    assert dag.schedule == "@daily"


def test_build_deploy_is_scheduled_on_the_champion_asset(dagbag) -> None:
    dag = dagbag.get_dag("fraud_build_deploy")
    assert edges(dag) == {
        ("import_model", "build"),
        ("import_model", "containerize"),
        ("import_model", "rollout"),
        ("build", "export"),
        ("build", "containerize"),
        ("export", "containerize"),
        ("containerize", "rollout"),
        ("rollout", "smoke_check"),
    }
    assert [a.name for a in dag.schedule] == ["fraud_champion"]
    assert type(dag.timetable).__name__ == "AssetTriggeredTimetable"
