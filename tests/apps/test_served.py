"""Both apps under gunicorn, as the pipeline runs them, with app A calling app B directly."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import requests

JOBS_BODY = "Jobs:\nTitle: Devops\nDescription: Awesome\n"


def test_jobs_through_both_apps_under_gunicorn(gunicorn, tmp_path):
    app_b_url = gunicorn("apps.app_b:app", APP_B_DB=str(tmp_path / "users.sqlite3"))
    app_a_url = gunicorn("apps.app_a:app", APP_B_URL=app_b_url)

    resp = requests.post(f"{app_a_url}/jobs", headers={"Authorization": "mytoken"}, timeout=5)
    assert (resp.status_code, resp.text) == (200, JOBS_BODY)
    assert resp.headers["Content-Type"].startswith("text/plain")

    resp = requests.post(f"{app_a_url}/jobs", headers={"Authorization": "nope"}, timeout=5)
    assert resp.status_code == 401
    assert requests.post(f"{app_a_url}/jobs", timeout=5).status_code == 401
    assert requests.get(f"{app_a_url}/hello", timeout=5).text == "Hello there"

    # A little of what `ab -c 4` does: concurrent requests, spread over both workers of each app.
    def post_jobs(_: int) -> int:
        return requests.post(
            f"{app_a_url}/jobs", headers={"Authorization": "mytoken"}, timeout=5
        ).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(post_jobs, range(100))) == {200}
