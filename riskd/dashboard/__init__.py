"""`riskd dashboard`: the risk desk's web page (DESIGN §4 "Dashboard", issue 15)."""
