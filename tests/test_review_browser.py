"""The review queue in a real browser: `fraudops review` beside the session's served API, driven
by Debian's headless Chromium through chromium-driver (Selenium). An analyst signs in and works
10 queued decisions with the keyboard; each verdict reaches the decision store under the
analyst's name and the online state. A form without its CSRF token and a wrong key are refused.

FRAUD_SCREENSHOTS=docs/images writes the queue's and a decision page's screenshots there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest

from training.core import decision_store as ds
from training.core import rules

from .conftest import free_port
from .servers import ANALYST_KEY, API, PROJECT, SCORE_KEY, stop, wait_for, wait_http

pytestmark = [pytest.mark.slow, pytest.mark.server]

# Two days after the small dataset ends: a day of the stream no other test logs decisions on
# (the queue's head is this test's). The clock gets there a step at a time (walk_to).
T0 = datetime(2018, 6, 17, 11, 0, 0)
DAY = T0.date().isoformat()
REVIEW_BIG = """\
version: browser-{tag}
rules:
  - {{name: big-to-review, kind: compare, field: tx_amount, op: ">=", value: 9000,
      action: review}}
  - {{name: high-score, kind: score, min: 0.9, action: decline}}
  - {{name: review-budget, kind: score, min: threshold, action: review}}
"""


@pytest.fixture(scope="module")
def review_url(service_url: str, session_dir: Path) -> Iterator[str]:
    """`fraudops review` on the session server's store and key file."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.fail("chromium and chromium-driver are needed (`make tools` installs them)")
    port = free_port()
    log = session_dir / "review.log"
    env = {
        **os.environ,
        "FRAUD_API_URL": service_url,
        "FRAUD_DECISION_DB_URL": f"sqlite:///{session_dir / 'bento-serve.decisions.db'}",
        "FRAUD_API_KEYS_FILE": str(session_dir / "bento-serve.keys"),
        "FRAUD_REVIEW_SECRET": uuid4().hex,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "review", "--port", str(port)],
        cwd=PROJECT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc, log, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
    assert ANALYST_KEY not in log.read_text()  # no key material in the app's log


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1360,1000",
                "--disable-dev-shm-usage"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    driver.implicitly_wait(5)  # a page's elements: found when it has loaded
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def queued(service_url: str, session_dir: Path) -> Iterator[list[dict]]:
    """12 large transactions sent to review by a rule set of their own (the default after)."""
    walk_to(service_url, T0)
    r = API.post(
        f"{service_url}/admin/rules", json={"rules": REVIEW_BIG.format(tag=uuid4().hex[:8])}
    )
    assert r.status_code == 200, r.text
    prefix = f"q{uuid4().hex[:6]}"
    body = [
        {
            "transaction_id": f"{prefix}-{i}",
            "tx_datetime": (T0 + timedelta(seconds=7 * i)).isoformat(),
            "customer_id": f"{prefix}-c{i}",
            "terminal_id": f"{prefix}-t{i}",
            "tx_amount": 9000.0 + i,
            "tx_channel": "card_not_present",
            "merchant_category": "electronics",
        }
        for i in range(12)
    ]
    answers = API.post(f"{service_url}/predict", json={"transactions": body}).json()
    assert [a["action"] for a in answers] == ["review"] * 12, answers
    store = f"sqlite:///{session_dir / 'bento-serve.decisions.db'}"

    def shipped() -> bool:
        with ds.connect(store) as conn:
            return ds.count(conn, ds.decisions, [t["transaction_id"] for t in body]) == 12

    wait_for(shipped, 60, "the decisions in the store", 0.5)
    try:
        yield body
    finally:
        r = API.post(f"{service_url}/admin/rules", json={"rules": rules.dump(rules.default())})
        assert r.status_code == 200, r.text


def walk_to(url: str, until: datetime) -> None:
    """The stream clock to ``until``, a transaction every 20 hours from where it is (it
    refuses a jump of more than a day)."""
    now = httpx.get(f"{url}/health").json()["clock"]["now"]
    at = datetime.fromisoformat(now.replace("Z", "+00:00")).replace(tzinfo=None)
    tag = uuid4().hex[:6]
    while at < until:
        at = min(at + timedelta(hours=20), until)
        step = {
            "transaction_id": f"walk-{tag}-{at:%d%H}",
            "tx_datetime": at.isoformat(),
            "customer_id": f"walker-{tag}",
            "terminal_id": "T-walk",
            "tx_amount": 10.0,
        }
        r = API.post(f"{url}/predict", json={"transactions": [step]})
        assert r.status_code == 200, r.text


def sign_in(driver, url: str, key: str) -> None:  # type: ignore[no-untyped-def]
    """Submit the sign-in form and wait for the page it leads to (not the form's own)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(f"{url}/login")
    driver.find_element(By.ID, "key").send_keys(key)
    button = driver.find_element(By.ID, "sign-in")
    button.click()
    WebDriverWait(driver, 30).until(expected_conditions.staleness_of(button))


def test_a_wrong_key_and_a_key_without_the_scopes_are_refused(browser, review_url: str) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, review_url, "fm_00000000_not-a-key-anyone-was-given")
    assert "not valid" in browser.find_element(By.ID, "error").text
    sign_in(browser, review_url, SCORE_KEY)
    error = browser.find_element(By.ID, "error").text
    assert "lacks scope label, read" in error and SCORE_KEY not in browser.page_source
    browser.get(f"{review_url}/queue")  # not signed in: back to the sign-in page
    assert browser.current_url.endswith("/login")


def test_an_analyst_works_ten_queued_decisions(
    browser, review_url: str, service_url: str, queued: list[dict], session_dir: Path
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, review_url, ANALYST_KEY)
    assert browser.find_element(By.ID, "analyst").text == "alice"
    assert ANALYST_KEY not in browser.page_source
    cookie = browser.get_cookie("fraud_review")
    assert cookie and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert ANALYST_KEY not in cookie["value"]
    browser.get(f"{review_url}/queue?day={DAY}")
    mine = {t["transaction_id"]: t for t in queued}
    shots = os.environ.get("FRAUD_SCREENSHOTS")
    if shots:
        browser.save_screenshot(str(PROJECT / shots / "review-queue.png"))
    store = f"sqlite:///{session_dir / 'bento-serve.decisions.db'}"
    worked: dict[str, bool] = {}
    body = browser.find_element(By.TAG_NAME, "body")
    browser.implicitly_wait(0)  # find_elements answers at once when nothing matches
    for n in range(10):
        first = browser.find_element(By.CSS_SELECTOR, ".item.selected")
        tx = first.get_attribute("data-id")
        assert tx in mine, f"not one of this test's decisions at the queue's head: {tx}"
        fraud = n % 3 == 0
        body.send_keys("f" if fraud else "g")  # the keyboard shortcuts
        wait_for(lambda tx=tx: not browser.find_elements(By.CSS_SELECTOR, f'[data-id="{tx}"]'),
                 20, f"{tx} to leave the queue", 0.2)  # fmt: skip
        body = browser.find_element(By.TAG_NAME, "body")
        worked[tx] = fraud
    browser.implicitly_wait(5)

    def labelled() -> list[dict]:
        with ds.connect(store) as conn:
            found = [ds.label_history(conn, tx) for tx in worked]
        return found if all(found) else []

    histories = wait_for(labelled, 60, "the verdicts in the store", 0.5)
    for (tx, fraud), history in zip(worked.items(), histories, strict=True):
        assert [(h["is_fraud"], h["api_key"]) for h in history] == [(fraud, "alice")]
        t = mine[tx]  # the online state learnt it: the terminal's risk a week later
        at = (datetime.fromisoformat(t["tx_datetime"]) + timedelta(days=7, hours=12)).isoformat()
        risk = API.get(f"{service_url}/state/terminals/{t['terminal_id']}", params={"at": at})
        assert risk.json()["risk_1d"] == (1.0 if fraud else 0.0), (tx, risk.text)

    pending = int(browser.find_element(By.ID, "pending").text)
    assert pending >= 2  # this test's last two, at least
    browser.get(f"{review_url}/counts?day={DAY}")
    assert int(browser.find_element(By.ID, "reviewed").text) >= 10
    assert int(browser.find_element(By.ID, "confirmed-fraud").text) >= 4

    done = next(iter(worked))
    browser.get(f"{review_url}/decisions/{done}")
    assert browser.find_element(By.ID, "rule").text.startswith("big-to-review")
    assert "alice" in browser.find_element(By.ID, "labels").text
    if shots:
        browser.save_screenshot(str(PROJECT / shots / "review-decision.png"))

    # A verdict posted without the session's CSRF token (or with another) changes nothing.
    session = {"fraud_review": browser.get_cookie("fraud_review")["value"]}
    left = next(t for t in mine if t not in worked)
    for form in ({"verdict": "fraud"}, {"verdict": "fraud", "csrf": "forged"}):
        r = httpx.post(f"{review_url}/decisions/{left}/verdict", data=form, cookies=session)
        assert r.status_code == 403 and "CSRF" in r.text
    with ds.connect(store) as conn:
        assert ds.label_history(conn, left) == []
    forged = httpx.get(f"{review_url}/queue", cookies={"fraud_review": "forged"})
    assert forged.status_code == 303 and forged.headers["location"] == "/login"


def test_the_rules_page_runs_a_backtest(browser, review_url: str, queued: list[dict]) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, review_url, ANALYST_KEY)
    assert browser.find_element(By.ID, "analyst").text == "alice"  # the queue has loaded
    browser.get(f"{review_url}/rules")
    assert browser.find_elements(By.ID, "version"), browser.page_source[-3000:]
    assert browser.find_element(By.ID, "version").text.startswith("browser-")
    browser.find_element(By.NAME, "since").send_keys(f"{DAY}T00:00:00Z")
    browser.find_element(By.NAME, "until").send_keys(f"{DAY}T23:59:59Z")
    browser.find_element(By.ID, "run-backtest").click()
    title = browser.find_element(By.ID, "backtest-result").text
    assert "decisions" in title and "frauds" in title
    assert "big-to-review" in browser.page_source
    # a candidate that does not parse: its line and field on the page, no result
    since = browser.find_element(By.NAME, "since")  # kept from the last run
    assert since.get_attribute("value") == f"{DAY}T00:00:00Z"
    bad = "version: x\nrules:\n  - {name: a, kind: score, min: 0.5, action: hold}\n"
    browser.find_element(By.NAME, "candidate").send_keys(bad)
    browser.find_element(By.ID, "run-backtest").click()
    error = browser.find_element(By.ID, "error").text
    assert "line 3" in error and "rules.0.action" in error, error
