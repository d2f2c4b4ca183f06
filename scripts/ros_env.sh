#!/usr/bin/env bash
# Keeps DDS on this host for every ROS process the demo or the tests start (sourced by the Makefile).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=${ROS_DOMAIN_ID:-$(( ( $$ % 200 ) + 20 ))}
export ROS_LOG_DIR=${ROS_LOG_DIR:-$(mktemp -d -t magma-roslog-XXXXXX)}
export FASTDDS_BUILTIN_TRANSPORTS=${FASTDDS_BUILTIN_TRANSPORTS:-LARGE_DATA}
