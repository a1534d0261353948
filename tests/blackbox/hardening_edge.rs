//! Security review fixes at the HTTP edge: API-key roles, slow bodies, body limits, the Authorization scheme, return_to.
