// The reconnect delay policy: full-jitter exponential backoff, its cap, and how
// close codes and retry hints change it.
import { describe, expect, it } from 'vitest';
import { backoffDelay, decideReconnect, DEFAULT_RECONNECT, type ReconnectOptions } from '../../src/index';

const options: ReconnectOptions = { ...DEFAULT_RECONNECT, initialDelayMs: 100, maxDelayMs: 1_000, multiplier: 2 };
const almostOne = () => 0.999_999;

describe('backoffDelay', () => {
  it('grows the ceiling exponentially up to the cap', () => {
    const ceilings = [1, 2, 3, 4, 5, 6, 10].map((attempt) => backoffDelay(attempt, options, almostOne));
    expect(ceilings).toEqual([99, 199, 399, 799, 999, 999, 999]);
  });

  it('draws uniformly below the ceiling (full jitter)', () => {
    expect(backoffDelay(3, options, () => 0)).toBe(0);
    expect(backoffDelay(3, options, () => 0.5)).toBe(200);
    for (let i = 0; i < 1_000; i++) {
      const delay = backoffDelay(4, options);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThan(800);
    }
  });

  it('treats attempt 0 like the first retry', () => {
    expect(backoffDelay(0, options, almostOne)).toBe(99);
  });
});

describe('decideReconnect', () => {
  const half = () => 0.5;

  it('stops after codes the protocol says not to reconnect after', () => {
    for (const code of [1002, 1007, 1008, 1009]) {
      expect(decideReconnect(code, '', 1, options, half)).toEqual({ reconnect: false, why: 'close_code' });
    }
  });

  it('backs off after a dropped connection or an internal error', () => {
    expect(decideReconnect(1006, '', 1, options, half)).toEqual({ reconnect: true, delayMs: 50, retryHintMs: undefined });
    expect(decideReconnect(1011, '', 3, options, half)).toEqual({ reconnect: true, delayMs: 200, retryHintMs: undefined });
    expect(decideReconnect(4000, 'slow consumer', 2, options, half)).toMatchObject({ reconnect: true, delayMs: 100 });
    expect(decideReconnect(4001, 'idle timeout', 2, options, half)).toMatchObject({ reconnect: true, delayMs: 100 });
  });

  it('waits at least the hint after "going away", and the backoff if it is longer', () => {
    expect(decideReconnect(1001, 'going away; retry_ms=737', 1, options, half)).toEqual({
      reconnect: true,
      delayMs: 737,
      retryHintMs: 737,
    });
    expect(decideReconnect(1001, 'going away; retry_ms=0', 4, options, half)).toMatchObject({ delayMs: 400 });
  });

  it('backs off after "going away" without a hint', () => {
    expect(decideReconnect(1001, 'going away', 2, options, half)).toMatchObject({ reconnect: true, delayMs: 100 });
  });

  it('waits at least the hint after "try again later"', () => {
    expect(decideReconnect(1013, 'overloaded; retry_ms=5000', 1, options, half)).toEqual({
      reconnect: true,
      delayMs: 5_000,
      retryHintMs: 5_000,
    });
    expect(decideReconnect(1013, 'overloaded; retry_ms=10', 4, options, half)).toMatchObject({ delayMs: 400 });
  });

  it('accepts a hint on any close code', () => {
    expect(decideReconnect(4000, 'slow consumer; retry_ms=3000', 1, options, half)).toMatchObject({ delayMs: 3_000 });
  });

  it('gives up after maxAttempts, and not at all when disabled', () => {
    const limited = { ...options, maxAttempts: 2 };
    expect(decideReconnect(1006, '', 2, limited, half).reconnect).toBe(true);
    expect(decideReconnect(1006, '', 3, limited, half)).toEqual({ reconnect: false, why: 'max_attempts' });
    expect(decideReconnect(1006, '', 1, { ...options, enabled: false }, half)).toEqual({
      reconnect: false,
      why: 'disabled',
    });
  });
});
