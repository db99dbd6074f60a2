"""When the training loop reports metrics to Ray Train (pure decision; the 2-rank runs in test_train use it)."""

from lonas_ray.train.loop import metrics_report_due, report_interval_s


def test_metrics_report_every_log_every_steps_once_the_controller_can_have_taken_the_last():
    assert metrics_report_due(done=20, log_every=10, since_last_s=2.5, interval_s=2.0)
    assert not metrics_report_due(done=21, log_every=10, since_last_s=9.0, interval_s=2.0)  # not a reporting step
    # 10 fast steps in 0.6 s: the report would wait 1.4 s for the controller's poll, so it is skipped
    assert not metrics_report_due(done=30, log_every=10, since_last_s=0.6, interval_s=2.0)
    assert metrics_report_due(done=40, log_every=10, since_last_s=2.0, interval_s=2.0)


def test_the_interval_follows_ray_trains_health_check_setting(monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    assert report_interval_s() == 2.0  # Ray Train 2.60's default poll of its workers
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    assert report_interval_s() == 0.5
