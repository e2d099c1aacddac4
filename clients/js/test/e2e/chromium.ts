// Debian's headless Chromium (/usr/bin/chromium, or CHROMIUM_PATH), launched by
// playwright-core the way every browser test here launches it: no browser is
// ever downloaded.
import { chromium, type Browser } from 'playwright-core';

/** Launches headless Chromium with what a sandboxed CI machine needs. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}
