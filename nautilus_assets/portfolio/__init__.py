"""Portfolio domain: the `portfolio_states` product (positions, average cost, P&L, fees, cash, NAV)."""
