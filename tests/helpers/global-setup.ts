/** Jest global setup: nothing shared yet; each suite starts what it needs via tests/helpers. */
export default async function globalSetup(): Promise<void> {}
