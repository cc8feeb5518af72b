// Open the fleet dashboard in headless Chromium, wait until every chart is drawn, and measure it.
//
//   node dashboard.mjs URL SCREENSHOT.png
//
// Uses Debian's Chromium (CHROMIUM, else /usr/bin/chromium) through playwright-core: no browser download.
// Prints one JSON line: {"first_chart_ms", "load_ms", "charts", "device_rows", "drift_flagged", "console_errors",
// "page_errors"} (times in ms from navigation start; drift_flagged: the chambers whose card is marked red).
// Exits 1, with the reason on stderr, when the page is not ready within TIMEOUT_MS (default 60000); 2 on bad usage.
import {chromium} from "playwright-core";

const [url, screenshot] = process.argv.slice(2);
if (!url || !screenshot) {
  console.error("usage: node dashboard.mjs URL SCREENSHOT.png");
  process.exit(2);
}
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const timeout = Number(process.env.TIMEOUT_MS || 60000);
const viewport = {width: 1400, height: 900};

const consoleErrors = [];
const pageErrors = [];

// Every chart container drawn: the page marks them data-ready="1" (and <body data-first-chart>).
function pageState() {
  const charts = [...document.querySelectorAll("[data-chart]")];
  return {
    firstChart: document.body.dataset.firstChart ?? null,
    charts: charts.length,
    ready: charts.filter((chart) => chart.dataset.ready === "1").length,
    waitingFor: charts.filter((chart) => chart.dataset.ready !== "1").map((chart) => chart.id || chart.dataset.chart),
    deviceRows: document.querySelectorAll("#device-table tbody tr[data-device]").length,
    driftFlagged: [...document.querySelectorAll(".drift-card[data-flagged='1']")].map((card) => card.dataset.chamber),
  };
}

let browser;
let exitCode = 0;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    timeout,
  });
  const page = await browser.newPage({viewport});
  page.on("console", (message) => {
    if (message.type() === "error") consoleErrors.push(message.text());
  });
  page.on("pageerror", (error) => pageErrors.push(String(error)));

  const started = Date.now();
  await page.goto(url, {waitUntil: "load", timeout});
  try {
    await page.waitForFunction(
      () => {
        const charts = [...document.querySelectorAll("[data-chart]")];
        return Boolean(document.body.dataset.firstChart) && charts.length > 0
          && charts.every((chart) => chart.dataset.ready === "1");
      },
      null,
      {timeout: Math.max(1, timeout - (Date.now() - started)), polling: 50},
    );
  } catch (error) {
    const state = await page.evaluate(pageState).catch(() => null);
    await page.screenshot({path: screenshot, fullPage: true}).catch(() => {});
    console.error(
      `timeout: the dashboard at ${url} was not ready within ${timeout} ms ` +
      `(first chart: ${state?.firstChart ?? "never"}; charts ready: ${state?.ready ?? "?"} of ${state?.charts ?? "?"}; ` +
      `still waiting for: ${state?.waitingFor?.join(", ") || "-"}); ` +
      `console errors: ${JSON.stringify(consoleErrors)}; page errors: ${JSON.stringify(pageErrors)}; ` +
      `screenshot so far: ${screenshot}`,
    );
    exitCode = 1;
  }
  if (exitCode === 0) {
    const state = await page.evaluate(pageState);
    const loadMs = await page.evaluate(() => {
      const [navigation] = performance.getEntriesByType("navigation");
      return navigation ? navigation.loadEventEnd : null;
    });
    await page.screenshot({path: screenshot, fullPage: true});
    console.log(JSON.stringify({
      first_chart_ms: Number(state.firstChart),
      load_ms: loadMs == null ? null : Number(loadMs.toFixed(1)),
      charts: state.ready,
      device_rows: state.deviceRows,
      drift_flagged: state.driftFlagged,
      console_errors: consoleErrors,
      page_errors: pageErrors,
    }));
  }
} catch (error) {
  console.error(`error: ${error.message ?? error} (Chromium: ${executablePath}; CHROMIUM sets another)`);
  exitCode = 1;
} finally {
  await browser?.close().catch(() => {});
}
process.exit(exitCode);
