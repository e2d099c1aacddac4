// Publishes 1, 2, 3 … to a channel through a gateway's admin API at a steady
// pace, one publication after the other, for the recovery tests: what a
// subscriber must end up with is exactly this sequence, in order.
import type { Gateway } from './gateway';

/** A publisher started by {@link publishSteadily}. */
export interface SteadyPublisher {
  /** How many publications the gateway accepted so far. */
  readonly published: number;
  /** Resolves with the count once all are published; rejects on one refused for 5 s. */
  readonly done: Promise<number>;
}

/** Publishes the numbers 1 to `count` to `channel` through `gateway`, one every `intervalMs`. */
export function publishSteadily(gateway: Gateway, channel: string, count: number, intervalMs: number): SteadyPublisher {
  const state = { published: 0 };
  const done = (async () => {
    for (let n = 1; n <= count; n++) {
      const started = Date.now();
      // A gateway logs "listening" before its Redis connection is up, and refuses
      // publishes (503) until it is: retried, with a key, so never published twice.
      for (let refusals = 0; ; refusals++) {
        try {
          await gateway.publish(channel, n, `${channel}-${n}`);
          break;
        } catch (error) {
          if (refusals >= 250) throw error;
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      }
      state.published = n;
      const rest = intervalMs - (Date.now() - started);
      if (rest > 0) await new Promise((resolve) => setTimeout(resolve, rest));
    }
    return count;
  })();
  return {
    get published() {
      return state.published;
    },
    done,
  };
}
