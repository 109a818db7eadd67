// `make bench`'s dashboard step: node first-view.mjs ROWS URL...
// Opens each one-time URL in a fresh page of one headless chromium and
// measures navigation start → ROWS certificate rows rendered (the page's
// state fetched and drawn). Prints a JSON array of milliseconds.
import { createRequire } from "node:module";
import path from "node:path";

const [rows, ...urls] = process.argv.slice(2);
const require = createRequire(path.join(process.env.BROWSER_DIR, "package.json"));
const { chromium } = require("playwright-core");
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const times = [];
try {
  for (const url of urls) {
    const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
    await page.goto(url, { waitUntil: "commit" });
    await page.waitForFunction((n) => document.querySelectorAll("tr.cert").length >= n, Number(rows), { timeout: 30000, polling: "raf" });
    times.push(await page.evaluate(() => performance.now()));
    await page.close();
  }
  console.log(JSON.stringify(times));
} catch (e) {
  console.error(String(e && e.stack || e));
  process.exitCode = 1;
} finally {
  await browser.close();
}
