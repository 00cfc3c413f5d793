/** Alerts: threshold and forecast arithmetic, delivery channels, and the monitor that ties them. */
export type {
  AlertChannel,
  AlertPayload,
  CommandChannelOptions,
  QueuedAlertChannel,
  WebhookBody,
  WebhookChannelOptions,
} from './channels.js';
export {
  alertPayload,
  alertText,
  commandChannel,
  logChannel,
  webhookBody,
  webhookChannel,
} from './channels.js';
export type { AlertMonitorOptions, AlertStore } from './monitor.js';
export { AlertMonitor } from './monitor.js';
export type { BurnRates, Forecast, ForecastInput, ThresholdLevel, Thresholds } from './thresholds.js';
export {
  crossedLevels,
  forecast,
  forecastMessage,
  formatInstant,
  formatTokens,
  percentOf,
  THRESHOLD_LEVELS,
  thresholdMessage,
} from './thresholds.js';
