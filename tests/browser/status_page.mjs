// Drives the status page in Debian's chromium (headless) with playwright-core; run by
// tests/test_status_page.py against the real local stack with two job profiles, after it
// dropped five folders: good/ (default profile, succeeds), bad/ (default, an unreadable file:
// fails, exit code 2), a folder named <img src=x onerror=alert(1)> (profile model-a, succeeds;
// its name must show as text), slow-1/ and slow-2/ (profile model-b, capped at one group: one
// sleeps, the other waits).
//
//   node tests/browser/status_page.mjs BASE_URL KEY SCREENSHOT
//
// Every check goes through the page. Prints one JSON line of findings; exits 1 on failure.
import { chromium } from "playwright-core";

const [base, key, screenshot] = process.argv.slice(2);
const XSS = "<img src=x onerror=alert(1)>";
const WAIT = 240_000;
const origin = new URL(base).origin;

const findings = { dialogs: [], foreign: [], keyInUrl: [], consoleErrors: [], failedResponses: [],
  steps: [] };
const step = (name) => {
  findings.steps.push(name);
  console.error(`[browser] ${name}`);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking"],
});
let failed = null;
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on("dialog", async (d) => {
    findings.dialogs.push(d.message());
    await d.dismiss();
  });
  page.on("console", (m) => {
    if (m.type() === "error") findings.consoleErrors.push(m.text());
  });
  // Which call answered an error (Chrome reports only "Failed to load resource" on the console).
  page.on("response", async (r) => {
    if (r.status() < 400) return;
    let body = "";
    try { body = (await r.text()).slice(0, 300); } catch { /* gone with the page */ }
    const where = new URL(r.url()).pathname;  // no query: the page address carries the key
    findings.failedResponses.push(`${r.status()} ${r.request().method()} ${where}: ${body}`);
  });
  let first = true;
  page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.origin !== origin) findings.foreign.push(r.url());
    // Only the page's own address may carry the key; every fetch sends it as a header.
    if (!first && url.searchParams.has("code")) findings.keyInUrl.push(r.url());
    if (!first && r.resourceType() === "fetch" && r.headers()["x-functions-key"] !== key) {
      findings.keyInUrl.push(`fetch without the key header: ${r.url()}`);
    }
    if (r.headers().referer) findings.keyInUrl.push(`referer sent: ${r.url()}`);
    first = false;
  });

  await page.goto(`${base}/api/ops/status?code=${encodeURIComponent(key)}`);
  step("page loaded");
  const row = (label, state) =>
    page.locator("#batches tbody tr", { has: page.locator("td.name", { hasText: label }) })
      .filter({ has: page.locator("td", { hasText: new RegExp(`^${state}$`) }) });
  // Labels are matched exactly (good/bad are substrings of nothing else here).
  await row("good", "succeeded").first().waitFor({ timeout: WAIT });
  step("good batch is done");
  await row("bad", "failed").first().waitFor({ timeout: WAIT });
  step("bad batch failed");
  await row(XSS, "succeeded").first().waitFor({ timeout: WAIT });
  step("script-named batch is done");
  findings.xssCellText = await row(XSS, "succeeded").first().locator("td.name").textContent();
  findings.profileCells = {};
  for (const [label, state] of [["good", "succeeded"], ["bad", "failed"], [XSS, "succeeded"]]) {
    findings.profileCells[label] = await row(label, state).first().locator("td.profile")
      .textContent();
  }
  // The Profiles table settles once the janitor has deleted the finished groups, the cost
  // summary has been read again and model-b's second folder waits at its cap.
  const profileRows = () => {
    const out = {};
    for (const tr of document.querySelectorAll("#profiles tbody tr")) {
      const cell = (c) => tr.querySelector(`td.${c}`).textContent;
      out[tr.dataset.profile] = { groups: cell("groups"), waiting: cell("waiting"),
        done: cell("done"), failed: cell("failed"), cost: cell("cost"),
        atCap: tr.classList.contains("at-cap") };
    }
    return out;
  };
  const settled = (rows) => {
    const [a, b, d] = [rows["model-a"], rows["model-b"], rows.default];
    return Boolean(a && b && d && a.done === "1" && d.done === "1" && d.failed === "1" &&
      a.groups.startsWith("0 ") && d.groups.startsWith("0 ") && b.groups === "1 / 1" &&
      b.waiting === "1");
  };
  const until = Date.now() + WAIT;
  findings.profiles = await page.evaluate(profileRows);
  while (!settled(findings.profiles)) {
    if (Date.now() > until) throw new Error(`profiles: ${JSON.stringify(findings.profiles)}`);
    await page.waitForTimeout(500);  // polled against a deadline: the page refreshes every 5 s
    findings.profiles = await page.evaluate(profileRows);
  }
  step("profiles table shows both profiles");
  findings.imgElements = await page.locator("img").count();
  findings.freshness = await page.locator("#freshness").textContent();
  findings.timelineBars = await page.locator("#timeline rect").count();
  await page.screenshot({ path: screenshot, fullPage: true });
  step("screenshot saved");

  await page.selectOption("#state-filter", "failed");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#batches tbody tr")];
    return rows.length > 0 && rows.every((r) => r.classList.contains("state-failed"));
  }, null, { timeout: 30_000 });
  step("state filter shows failed batches only");

  const badRow = row("bad", "failed").first();
  const badId = await badRow.getAttribute("data-batch");
  findings.badBatch = badId;
  await badRow.locator("a").click();
  await page.locator("#detail").waitFor({ state: "visible", timeout: 30_000 });
  await page.locator("#detail-files td.name").first().waitFor({ timeout: 30_000 });
  findings.detailFiles = await page.locator("#detail-files td.name").allTextContents();
  await page.locator("#detail-attempts button.show-log").first().click();
  await page.waitForFunction(
    () => /FAILED/.test(document.getElementById("log").textContent || ""), null,
    { timeout: 30_000 });
  findings.logExcerpt = (await page.locator("#log").textContent()).slice(0, 2000);
  step("log of the failed attempt is readable");

  await page.locator("#retry").click();
  await page.locator("#confirm").waitFor({ state: "visible" });
  await page.locator("#confirm-yes").click();
  await page.waitForFunction(
    () => /put back into incoming/.test(document.getElementById("action-result").textContent),
    null, { timeout: 60_000 });
  findings.retryResult = await page.locator("#action-result").textContent();
  step("retry confirmed");
  await page.selectOption("#state-filter", "");
  // The retried inputs come back as a new batch of the same folder.
  await page.waitForFunction((old) => {
    const rows = [...document.querySelectorAll("#batches tbody tr")];
    return rows.some((r) => r.dataset.batch !== old && r.children[1].textContent === "bad");
  }, badId, { timeout: WAIT });
  step("the retried folder is a new batch");

  await page.locator("#run-janitor").click();
  await page.locator("#confirm").waitFor({ state: "visible", timeout: 30_000 });
  findings.janitorQuestion = await page.locator("#confirm-text").textContent();
  await page.locator("#confirm-yes").click();
  await page.waitForFunction(
    () => /^janitor: /.test(document.getElementById("action-result").textContent), null,
    { timeout: 60_000 });
  step("janitor ran after its dry run");
} catch (e) {
  failed = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
}
findings.error = failed;
console.log(JSON.stringify(findings));
process.exit(failed ? 1 : 0);
