# Echo app on faye-websocket-ruby, the seeds' legacy server, run by thin for tests/faye.rs.
# It never pings on its own (ping: nil); the proxy's pings are what keep idle sessions alive.
require 'faye/websocket'
Faye::WebSocket.load_adapter('thin')

run lambda { |env|
  next [200, { 'Content-Type' => 'text/plain' }, ["faye echo\n"]] unless Faye::WebSocket.websocket?(env)
  ws = Faye::WebSocket.new(env, nil, ping: nil)
  ws.on(:message) { |event| ws.send(event.data) }
  ws.rack_response
}
