// Drives `certfleet dashboard` in Debian's headless chromium (playwright-core).
// Usage: node dashboard.mjs URL NAME SCREENSHOT
//   1. opens URL (the one-time token link) and waits for the page's state;
//   2. prints "ready" and waits, without reloading, for NAME's row to
//      appear (the test issues it then) and for its rollout cell to read
//      1/1 (a watcher reported it loaded);
//   3. opens the row's rollout, checks the server's row, prints "seen",
//      takes a screenshot to SCREENSHOT and prints "done".
// Exit 1 with a message on any failure.
import { createRequire } from "node:module";
import path from "node:path";

const [url, name, screenshot] = process.argv.slice(2);
const require = createRequire(path.join(process.env.BROWSER_DIR, "package.json"));
const { chromium } = require("playwright-core");

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const rsp = await page.goto(url);
  if (rsp.status() !== 200) throw new Error(`page answered ${rsp.status()}`);
  await page.waitForFunction(() => document.getElementById("n-certs").textContent !== "–", null, { timeout: 15000 });
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: 15000 });
  console.log("ready");
  const row = page.locator(`tr.cert[data-name="${name}"]`);
  await row.waitFor({ timeout: 60000 });
  const loads = await page.evaluate(() => performance.getEntriesByType("navigation").length);
  if (loads !== 1) throw new Error(`the page was loaded ${loads} times`);
  await page.waitForFunction((n) => {
    const cell = document.querySelector(`tr.cert[data-name="${n}"] td.rollout`);
    return cell && cell.textContent === "1/1";
  }, name, { timeout: 60000 });
  await row.click();
  await page.locator("tr.detail tr[data-server]").first().waitFor({ timeout: 10000 });
  const serves = await page.locator("tr.detail tr[data-server] td").last().textContent();
  if (serves !== "yes") throw new Error(`rollout row says ${serves}`);
  console.log("seen");
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log("done");
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
