/**
 * Jest reporter for CI logs: one line when each test file starts and ends, with
 * its place in the run and the elapsed time, so a long run shows where it is.
 * Use next to the default reporter: jest --reporters=default --reporters=./tests/helpers/progress-reporter.js
 */
class ProgressReporter {
  constructor() {
    this.total = 0;
    this.started = 0;
    this.done = 0;
    this.t0 = Date.now();
  }

  elapsed() {
    return `${((Date.now() - this.t0) / 1000).toFixed(0)}s`;
  }

  onRunStart(results) {
    this.total = results.numTotalTestSuites;
    this.t0 = Date.now();
  }

  onTestStart(test) {
    this.started += 1;
    process.stderr.write(`[progress ${this.elapsed()}] start ${this.started}/${this.total} ${this.rel(test.path)}\n`);
  }

  onTestResult(test, result) {
    this.done += 1;
    const failed = result.numFailingTests > 0 || result.testExecError;
    const secs = ((result.perfStats.end - result.perfStats.start) / 1000).toFixed(1);
    process.stderr.write(`[progress ${this.elapsed()}] ${failed ? 'FAIL' : 'pass'} ${this.done}/${this.total} ${this.rel(test.path)} (${secs}s)\n`);
  }

  rel(p) {
    return p.startsWith(process.cwd()) ? p.slice(process.cwd().length + 1) : p;
  }
}

module.exports = ProgressReporter;
