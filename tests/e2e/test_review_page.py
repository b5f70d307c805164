"""The review page in a real headless browser: a person relabels and excludes, and sees what
was not saved."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.config.clean import CleanParams
from pipeline.contracts import decisions as decision_log
from testing.browser import browser as open_browser


def test_a_person_relabels_and_excludes_in_a_real_browser(review_server, tiny_raw: Path,
                                                          tiny_clean_params: CleanParams,
                                                          tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from pipeline.stages.clean import clean

    url, store = review_server
    browser = open_browser()
    try:
        browser.get(url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"))
        cards = browser.find_elements(By.CSS_SELECTOR, "figure.card")
        first, second = cards[0].get_attribute("data-sha"), cards[1].get_attribute("data-sha")
        cards[0].send_keys("r")  # the keyboard: relabel the focused image to the other class
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-saved") == "1")
        browser.find_element(By.CSS_SELECTOR, "figure.card:focus").send_keys(Keys.ARROW_RIGHT)
        focused = browser.find_element(By.CSS_SELECTOR, "figure.card:focus").get_attribute("data-sha")
        assert focused == second
        browser.find_element(By.CSS_SELECTOR, f'figure.card[data-sha="{second}"] '
                             'button[data-action="exclude"]').click()  # the mouse
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-saved") == "2")
        shown = browser.find_element(By.CSS_SELECTOR, f'figure.card[data-sha="{first}"] .state').text
        # a near-duplicate group: its button shows the kept image and the copies folded into it
        button = browser.find_element(By.CSS_SELECTOR, "figure.card button.group")
        grouped = button.find_element(By.XPATH, "./ancestor::figure").get_attribute("data-sha")
        loaded = browser.find_element(By.TAG_NAME, "body").get_attribute("data-loaded")
        button.click()
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-loaded") != loaded)
        members = {c.get_attribute("data-sha") for c in browser.find_elements(By.CSS_SELECTOR, "figure.card")}
        # A hand edit broke the decisions file: the server refuses, and the page says so.
        kept_text = store.decisions_path.read_text()
        store.decisions_path.write_text(kept_text + '{"sha256": "not-a-sha", "action": "keep"}\n')
        browser.find_element(By.CSS_SELECTOR, 'figure.card button[data-action="keep"]').click()
        alert = wait.until(expected_conditions.alert_is_present())
        refusal = alert.text
        alert.accept()
        store.decisions_path.write_text(kept_text)
    finally:
        browser.quit()
    assert refusal.startswith("not saved: ") and "decisions.jsonl:3" in refusal, refusal
    before = {r["sha256"]: r for r in store.kept}
    other = next(c for c in store.classes if c != before[first]["class"])
    assert shown == f"relabel → {other}"
    made = decision_log.read(store.decisions_path)
    assert [(d.sha256, d.action, d.label) for d in made] == [
        (first, "relabel", other), (second, "exclude", before[second]["class"])]
    clean(tiny_raw, tmp_path / "next", tiny_clean_params, store.decisions_path)  # the next run
    rows = {r["sha256"]: r for r in map(json.loads, (tmp_path / "next" / "images.jsonl").open())}
    assert rows[first]["label"] == other and rows[first]["label_source"] == "review"
    assert second not in rows
    group = before[grouped]["group"]
    assert members == {grouped} | {r["sha256"] for r in store.rejected if r["group"] == group}
    assert len(members) == before[grouped]["group_size"] > 1
