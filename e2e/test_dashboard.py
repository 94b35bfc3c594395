"""The dashboard in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`) driven by Selenium, against `switchyard demo`.

One scenario, in order, as an operator would go: log in; send traffic through the demo
and see requests and spend; break the primary deployment of `support-chat` in the
simulator and see the traffic share move to the fallback on Overview and the breaker
open on Health; follow a failed-over request's route; create a key in the UI, use it
with the OpenAI SDK, revoke it in the UI and see the next request refused; log out.

Every wait is bounded polling on a condition, never a fixed sleep. Screenshots go to
$SWITCHYARD_SCREENSHOTS when set (the README's come from
`SWITCHYARD_SCREENSHOTS=docs/images scripts/test-all -k dashboard`), else to the
test's temporary directory.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import openai
import pytest

from conftest import DEMO_KEY, REPO_ROOT, SimControl, spawn_listening

CHROMEDRIVER = "/usr/bin/chromedriver"
ADMIN_TOKEN = "sy-e2e-admin-token-0123456789abcdef"
WAIT_S = 45.0

selenium = pytest.importorskip("selenium")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402


def wait_for(what: str, cond: Callable[[], object], timeout: float = WAIT_S, between: Callable[[], None] | None = None):
    """Polls `cond` until it is truthy (returns it) or fails after `timeout` seconds.
    `between` runs between polls (e.g. to send more traffic)."""
    deadline = time.monotonic() + timeout
    last_error = None
    while True:
        try:
            v = cond()
            if v:
                return v
        except Exception as e:  # an element not there yet, a stale one
            last_error = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last error: {last_error})" if last_error else ""))
        if between:
            between()
        time.sleep(0.25)


@pytest.fixture()
def dash_demo(session_dir: Path, bin_path: Path):
    """A demo of its own (fresh ledger: the numbers start at zero), with a known admin token."""
    workdir = session_dir / "dash-demo"
    workdir.mkdir()
    ledger = workdir / "ledger.db"
    proc, port = spawn_listening(
        workdir,
        "dash-demo",
        lambda port: [bin_path, "demo", "--listen", f"127.0.0.1:{port}", "--key", DEMO_KEY,
                      "--admin-token", ADMIN_TOKEN, "--ledger", ledger],
        "/healthz",
    )
    try:
        root = f"http://127.0.0.1:{port}"
        found: dict[str, str] = {}

        def banner() -> bool:
            out = proc.stdout()
            sim = re.search(r"provider simulator at (http://127\.0\.0\.1:\d+)", out)
            link = re.search(r"Login link:\s+(\S+)", out)
            if sim and link and "Dashboard:" in out:
                found.update(sim=sim.group(1), link=link.group(1))
                return True
            return False

        proc.wait_until(banner, "the demo banner with the dashboard")
        out = proc.stdout()
        assert f"Dashboard:   {root}/dashboard" in out, out
        assert f"Admin token: {ADMIN_TOKEN}" in out, out
        assert found["link"].startswith(f"{root}/dashboard/login/"), out
        proc.wait_http_ok(f"{found['sim']}/_sim/health")
        yield {"root": root, "link": found["link"], "control": SimControl(found["sim"])}
    finally:
        proc.stop()


@pytest.fixture()
def browser():
    if not (shutil.which("chromium") and os.path.exists(CHROMEDRIVER)):
        pytest.fail("chromium and chromium-driver are needed (scripts/test-all installs them)")
    profile = tempfile.mkdtemp(prefix="switchyard-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,800"]:
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshots_dir(tmp_path: Path) -> Path:
    raw = os.environ.get("SWITCHYARD_SCREENSHOTS")
    d = Path(raw) if raw else tmp_path / "screenshots"
    if not d.is_absolute():
        d = REPO_ROOT / d
    d.mkdir(parents=True, exist_ok=True)
    return d


def text(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def attr(driver, css: str, name: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).get_attribute(name) or ""


def click(driver, element) -> None:
    """Scrolls the element to the middle first: the sticky header must not take the click."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    element.click()


def open_page(driver, name: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#nav a[data-page="{name}"]').click()
    wait_for(f"the {name} page to load", lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") == name)


def test_the_dashboard_in_a_browser(dash_demo, browser, tmp_path):
    root, control = dash_demo["root"], dash_demo["control"]
    shots = screenshots_dir(tmp_path)
    d = browser
    client = openai.OpenAI(base_url=f"{root}/v1", api_key=DEMO_KEY, max_retries=0, timeout=30)

    # --- Login: a wrong token is refused, the right one opens the app.
    d.get(f"{root}/dashboard")
    d.find_element(By.ID, "token").send_keys("not-the-token")
    d.find_element(By.ID, "login-submit").click()
    wait_for("the login error", lambda: "not the admin token" in text(d, "#login-error"))
    d.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    d.find_element(By.ID, "login-submit").click()
    wait_for("the app after login", lambda: d.find_elements(By.ID, "nav"))
    cookie = d.get_cookie("switchyard_session")
    assert cookie and cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict", cookie
    Select(d.find_element(By.ID, "window")).select_by_value("15m")

    # --- Traffic through the demo: the Overview shows requests and spend.
    for i in range(4):
        list(client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True))
    for i in range(12):
        if i % 2:
            client.chat.completions.create(model="support-chat", messages=[{"role": "user", "content": f"hello {i}"}])
        else:
            list(client.chat.completions.create(model="support-chat", stream=True,
                                                messages=[{"role": "user", "content": f"hello {i}"}]))
    open_page(d, "overview")
    wait_for("16 requests on Overview", lambda: int(attr(d, "#ov-requests", "data-value")) >= 16)
    wait_for("non-zero spend on Overview", lambda: int(attr(d, "#ov-spend", "data-nano")) > 0)
    wait_for("the primary's share", lambda: float(attr(d, '#share-now tr[data-provider="sim-openai-primary"]', "data-share")) > 0.5)
    assert d.find_elements(By.CSS_SELECTOR, 'svg.chart rect[data-provider="sim-openai-primary"]')
    d.save_screenshot(str(shots / "dashboard-overview.png"))

    # --- Break the primary: traffic moves to the fallback, the breaker opens.
    control.set_fault(instance="primary", model="gpt-4o-mini", kind="error", status=500)

    def more_traffic() -> None:
        for _ in range(3):
            client.chat.completions.create(model="support-chat", messages=[{"role": "user", "content": "again"}])

    wait_for("the fallback's share to pass the primary's in the latest bucket",
             lambda: float(attr(d, '#share-now tr[data-provider="sim-azure"]', "data-share")) > 0.5,
             between=more_traffic)
    wait_for("the primary's failed attempts on Overview",
             lambda: text(d, '#deployments tr[data-deployment="openai-primary-gpt-4o-mini"] td.failed-attempts').split(" / ")[0] != "0")
    d.save_screenshot(str(shots / "dashboard-overview-failover.png"))
    open_page(d, "health")
    wait_for("the primary's breaker open on Health",
             lambda: text(d, 'tr[data-deployment="openai-primary-gpt-4o-mini"] td.breaker') == "open",
             between=more_traffic)
    assert text(d, 'tr[data-deployment="azure-gpt-4o-mini"] td.breaker') == "closed"
    wait_for("the primary's upstream errors by class",
             lambda: d.find_elements(By.CSS_SELECTOR, '#errors tr[data-deployment="openai-primary-gpt-4o-mini"]'))
    d.save_screenshot(str(shots / "dashboard-health.png"))
    control.clear_faults()

    # --- Requests: a failed-over request shows both attempts, in order.
    open_page(d, "requests")
    Select(d.find_element(By.ID, "f-status")).select_by_value("200")
    model = d.find_element(By.ID, "f-model")
    model.send_keys("support-chat\n")
    wait_for("support-chat rows", lambda: d.find_elements(By.CSS_SELECTOR, "#requests tr[data-request]"))

    # The list is redrawn live: work with request ids, and find elements afresh.
    ids = wait_for("request ids", lambda: [r.get_attribute("data-request")
                                            for r in d.find_elements(By.CSS_SELECTOR, "#requests tr[data-request]")])

    def hops_of(request_id: str) -> int:
        wait_for(f"row {request_id} clicked",
                 lambda: click(d, d.find_element(By.CSS_SELECTOR, f'#requests tr[data-request="{request_id}"]')) or True)
        wait_for(f"the route of {request_id}",
                 lambda: text(d, "#req-detail h2 code") == request_id and d.find_elements(By.CSS_SELECTOR, "#route .hop"))
        return len(d.find_elements(By.CSS_SELECTOR, "#route .hop"))

    def open_failover_row() -> bool:
        return any(hops_of(i) >= 2 for i in ids)

    wait_for("a failed-over request with two attempts", open_failover_row)
    # The page redraws the route at every poll: read the hops in one script call, so no
    # element can go stale between finding it and reading it.
    hops = d.execute_script("return Array.from(document.querySelectorAll('#route .hop'), (h) => h.innerText);")
    assert "openai-primary-gpt-4o-mini" in hops[0] and "upstream_5xx" in hops[0], hops
    assert "azure-gpt-4o-mini" in hops[-1], hops
    d.execute_script("window.scrollTo(0, 0);")
    d.save_screenshot(str(shots / "dashboard-requests.png"))

    # --- Spend: the total and the groups.
    open_page(d, "spend")
    wait_for("spend on the Spend page", lambda: int(attr(d, "#spend-total", "data-nano")) > 0)
    wait_for("the by-provider button clicked",
             lambda: d.find_element(By.CSS_SELECTOR, 'button[data-by="provider"]').click() or True)
    wait_for("spend by provider", lambda: d.find_elements(By.CSS_SELECTOR, '#spend-table tr[data-group="sim-azure"]'))

    # --- Keys: create a team and a key in the UI, use the key, revoke it, see it refused.
    open_page(d, "keys")
    d.find_element(By.ID, "team-name").send_keys("dash-team")
    d.find_element(By.ID, "team-budgets").send_keys('[{"period": "month", "limit_usd": "0.01"}]')
    d.find_element(By.ID, "team-create").click()
    wait_for("the new team", lambda: d.find_elements(By.CSS_SELECTOR, '#teams tr[data-team="dash-team"]'))
    d.find_element(By.ID, "key-name").send_keys("dash-e2e")
    wait_for("the team in the key form", lambda: d.find_elements(By.CSS_SELECTOR, '#key-team option[value="dash-team"]'))
    Select(d.find_element(By.ID, "key-team")).select_by_value("dash-team")
    d.find_element(By.ID, "key-create").click()
    secret = wait_for("the new secret, shown once", lambda: text(d, "#new-secret"))
    # The key list is redrawn at every poll: find rows afresh, by selector, each time.
    key_id = wait_for("the new key's row", lambda: attr(d, '#keys tr[data-name="dash-e2e"]', "data-key"))
    wait_for("the new key active", lambda: text(d, f'#keys tr[data-key="{key_id}"] td.status') == "active")
    mine = openai.OpenAI(base_url=f"{root}/v1", api_key=secret, max_retries=0, timeout=30)
    answer = mine.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "mine"}])
    assert answer.choices[0].message.content
    # Edit the key's policy in the UI: it may use support-chat only from now on.
    wait_for("the edit button clicked",
             lambda: click(d, d.find_element(By.CSS_SELECTOR, f'button[data-edit="{key_id}"]')) or True)
    policy = wait_for("the policy editor", lambda: d.find_element(By.ID, f"edit-policy-{key_id}"))
    policy.clear()
    policy.send_keys('{"models": ["support-chat"]}')
    d.save_screenshot(str(shots / "dashboard-keys.png"))
    click(d, d.find_element(By.CSS_SELECTOR, f'button[data-save="{key_id}"]'))
    wait_for("the editor closed", lambda: not d.find_elements(By.CSS_SELECTOR, "tr.editor-row"))

    def model_refused() -> bool:
        try:
            mine.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "mine"}])
            return False
        except openai.PermissionDeniedError as e:
            return e.status_code == 403

    # The editor closes only once the PATCH has answered, and the admin API applies a
    # change to the gateway that serves it before answering (the demo is one process):
    # the very next request is judged by the new policy.
    assert model_refused(), "the first request after the policy edit was not refused"
    assert mine.chat.completions.create(model="support-chat", messages=[{"role": "user", "content": "ok"}]).choices
    # The budget's burn shows on the Spend page.
    open_page(d, "spend")
    wait_for("the team's budget", lambda: d.find_elements(By.CSS_SELECTOR, '#budgets tr[data-budget="team:dash-team:month"]'))
    d.save_screenshot(str(shots / "dashboard-spend.png"))
    open_page(d, "keys")
    # Record the admin API's answers as the page gets them: the list may show the key
    # revoked from a poll that read the store while the revoke call was still applying
    # the change, so the revoke call's own answer is what says the gateway refuses it.
    d.execute_script("""
        const inner = window.fetch;
        window.__answered = [];
        window.fetch = async (input, init) => {
            const res = await inner(input, init);
            window.__answered.push([(init && init.method) || "GET", String(input), res.status]);
            return res;
        };""")
    revoke = f'button[data-revoke="{key_id}"]'
    wait_for("the revoke button clicked", lambda: click(d, d.find_element(By.CSS_SELECTOR, revoke)) or True)
    wait_for("the revoke button armed", lambda: text(d, revoke) == "Confirm revoke")
    wait_for("the confirming click", lambda: click(d, d.find_element(By.CSS_SELECTOR, revoke)) or True)
    wait_for("the key revoked in the list", lambda: text(d, f'#keys tr[data-key="{key_id}"] td.status') == "revoked")
    answered = wait_for("the revoke call's answer", lambda: [a for a in d.execute_script("return window.__answered;")
                                                             if a[0] == "POST" and a[1].endswith(f"/{key_id}/revoke")])
    assert answered[0][2] == 200, answered

    def refused() -> bool:
        try:
            mine.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "mine"}])
            return False
        except openai.AuthenticationError as e:
            return e.status_code == 401

    # One process: the revocation is in force once its call has answered, so the very
    # next request with the key is refused (with several replicas, the others would
    # see it only at their next poll of the store).
    assert refused(), "the first request after the revocation was not refused"

    # --- A phone's width: every page fits the screen, without sideways scrolling.
    d.set_window_size(390, 844)
    width = d.execute_script("return window.innerWidth;")
    assert width <= 390, f"the window is {width} px wide, not a phone's"
    for page in ["overview", "spend", "health", "requests", "keys"]:
        open_page(d, page)
        if page == "overview":
            wait_for("Overview at phone width", lambda: int(attr(d, "#ov-requests", "data-value")) > 0)
            d.save_screenshot(str(shots / "dashboard-phone.png"))
        overflow = d.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth];")
        assert overflow[0] <= overflow[1], f"{page} at phone width: {overflow[0]} px of content in {overflow[1]} px"
    d.set_window_size(1280, 800)

    # --- Logout ends the session: the app is gone, the admin API refuses the cookie.
    d.find_element(By.ID, "logout").click()
    wait_for("the login form after logout", lambda: d.find_elements(By.ID, "login-form"))
    d.get(f"{root}/admin/health")
    assert "admin_token" in d.page_source, d.page_source

    # --- The one-time login link works once.
    d.get(dash_demo["link"])
    wait_for("the app from the login link", lambda: d.find_elements(By.ID, "nav"))
    d.delete_all_cookies()
    d.get(dash_demo["link"])
    wait_for("the spent link refused", lambda: "used already" in text(d, "#login-error"))
