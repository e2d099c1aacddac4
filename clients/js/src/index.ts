/**
 * Public entry point of @shardcast/client: the client, its options and events,
 * the typed errors, the codecs and the protocol definitions. Everything a user
 * imports comes from here; the modules behind it are internal layout.
 */

export { ShardcastClient } from './client';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionState,
  HeartbeatOptions,
  HistoryOptions,
  HistoryResult,
  JoinEvent,
  LeaveEvent,
  MessageHandler,
  PresenceResult,
  PublishOptions,
  PublishResult,
  ReceivedMessage,
  StaleEvent,
  SubscribeOptions,
  Subscription,
  SubscriptionEvents,
  SubscriptionState,
  SubscriptionTokenProvider,
  TokenProvider,
} from './types';
export { backoffDelay, decideReconnect, DEFAULT_RECONNECT, type ReconnectDecision, type ReconnectOptions } from './backoff';
export { codecFor, jsonCodec, msgpackCodec, toServerFrame, type Codec, type FramePayload } from './codec';
export type { Unsubscribe } from './emitter';
// Everything in ./errors is public: the typed errors (and the code-to-class mapping) are part of the API.
export * from './errors';
export {
  CloseCode,
  DEFAULT_MAX_CHANNEL_LENGTH,
  DEFAULT_MAX_MESSAGE_BYTES,
  ERROR_CODES,
  isValidIdempotencyKey,
  MAX_IDEMPOTENCY_KEY_LENGTH,
  parseRetryMs,
  PROTOCOL_VERSION,
  shouldReconnect,
  SUBPROTOCOLS,
  toErrorCode,
  toGapReason,
  validateChannel,
  type AckFrame,
  type ChannelNameProblem,
  type ClientFrame,
  type ConnectFrame,
  type Encoding,
  type ErrorCode,
  type ErrorFrame,
  type MessageFrame,
  type GapFrame,
  type GapReason,
  type HistoryFrame,
  type HistoryPublication,
  type HistoryRequestFrame,
  type JoinFrame,
  type LeaveFrame,
  type PingFrame,
  type PresenceFrame,
  type PresenceMember,
  type PresenceRequestFrame,
  type PongFrame,
  type PublishFrame,
  type RefreshFrame,
  type ReplyFrame,
  type ServerFrame,
  type StreamPosition,
  type SubRefreshFrame,
  type SubscribeFrame,
  type UnsubscribeCode,
  type UnsubscribedFrame,
  type UnsubscribeFrame,
  type WelcomeFrame,
} from './protocol';
export {
  FATAL_HANDSHAKE_STATUSES,
  httpStatusFromError,
  NoWebSocketError,
  ReadyState,
  type WebSocketConstructor,
  type WebSocketLike,
} from './transport';
